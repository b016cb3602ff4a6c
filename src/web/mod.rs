//! What the patient's phone talks to: the questionnaire page (`/s/{token}`, which
//! also takes a plain form POST when JavaScript is off), its JSON API, and the assets.

pub mod api;
pub mod home;
pub mod page;
pub mod route_docs;

use std::collections::BTreeMap;

use poem::http::StatusCode;
use poem::web::{Data, Html, Path};
use poem::{Body, IntoResponse, Response, handler};

use crate::invitations::COMPLETED;
use crate::invitations::lifecycle::{self, FlowError};
use crate::state::AppState;

/// Nothing external, nothing inline: the page's own script and styles only.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub fn html(status: StatusCode, body: String) -> Response {
    // `Html` sets the one content-type; `with_header` would add a second beside a
    // String's text/plain.
    Html(body)
        .with_status(status)
        .with_header("content-security-policy", PAGE_CSP)
        .with_header("x-content-type-options", "nosniff")
        .with_header("x-frame-options", "DENY")
        // The token is in the URL: never hand it to another site.
        .with_header("referrer-policy", "no-referrer")
        .with_header("cache-control", "no-store")
        .into_response()
}

fn flow_page(state: &AppState, e: FlowError, title: &str) -> Response {
    let clinic = state.config.clinic_name.clone().unwrap_or_default();
    match e {
        FlowError::NotFound => html(StatusCode::NOT_FOUND, page::render_not_found()),
        FlowError::Expired => html(StatusCode::GONE, page::render_expired()),
        FlowError::Completed => html(
            StatusCode::CONFLICT,
            page::render_already_completed(&clinic, title),
        ),
        FlowError::TooLarge => html(StatusCode::PAYLOAD_TOO_LARGE, page::render_not_found()),
        FlowError::Invalid(_) | FlowError::Internal(_) => {
            let err: crate::error::ApiError = e.into();
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                page::render_failure(&err.body().message),
            )
        }
    }
}

#[handler]
pub async fn survey_page(Path(token): Path<String>, Data(state): Data<&AppState>) -> Response {
    let mut inv = match lifecycle::by_token(state, &token).await {
        Ok(i) => i,
        Err(e) => return flow_page(state, e, ""),
    };
    let Ok(q) = lifecycle::questionnaire_of(state, &inv).await else {
        return flow_page(
            state,
            FlowError::Internal(anyhow::anyhow!("questionnaire missing")),
            "",
        );
    };
    let clinic = state.config.clinic_name.clone().unwrap_or_default();
    if inv.status == COMPLETED {
        // No messages here: they follow from the answers, and anyone holding the
        // link (an SMS gateway, a forwarded message) may open it again.
        return html(
            StatusCode::OK,
            page::render_thank_you(&clinic, &q.title, &[]),
        );
    }
    if let Err(e) = lifecycle::mark_opened(state, &mut inv).await {
        return flow_page(state, e, &q.title);
    }
    let answers = match lifecycle::draft_of(state, &inv).await {
        Ok(a) => a,
        Err(e) => return flow_page(state, e, &q.title),
    };
    render(
        state,
        &token,
        &inv,
        &q,
        &answers,
        &BTreeMap::new(),
        StatusCode::OK,
    )
}

fn render(
    state: &AppState,
    token: &str,
    inv: &crate::db::entities::invitation::Model,
    q: &crate::survey::Questionnaire,
    answers: &crate::survey::Answers,
    errors: &BTreeMap<String, String>,
    status: StatusCode,
) -> Response {
    let clinic = state.config.clinic_name.clone().unwrap_or_default();
    let expires = crate::completion::moscow(inv.expires_at);
    html(
        status,
        page::render_survey(&page::SurveyPage {
            token,
            questionnaire: q,
            patient_name: &inv.patient_name,
            clinic: &clinic,
            answers,
            errors,
            expires_at: Some(&expires),
        }),
    )
}

/// The no-JavaScript submit: validated on the server, re-rendered with messages.
#[handler]
pub async fn survey_form_submit(
    Path(token): Path<String>,
    body: Body,
    Data(state): Data<&AppState>,
) -> Response {
    let inv = match lifecycle::by_token(state, &token).await {
        Ok(i) => i,
        Err(e) => return flow_page(state, e, ""),
    };
    let Ok(q) = lifecycle::questionnaire_of(state, &inv).await else {
        return flow_page(
            state,
            FlowError::Internal(anyhow::anyhow!("questionnaire missing")),
            "",
        );
    };
    let bytes = body.into_bytes().await.unwrap_or_default();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let answers = page::answers_from_form(&q, &pairs);
    match lifecycle::submit(state, &inv, answers.clone()).await {
        Ok(done) => {
            let clinic = state.config.clinic_name.clone().unwrap_or_default();
            html(
                StatusCode::OK,
                page::render_thank_you(&clinic, &q.title, &done.patient_messages),
            )
        }
        Err(FlowError::Invalid(errors)) => render(
            state,
            &token,
            &inv,
            &q,
            &answers,
            &errors,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        Err(e) => flow_page(state, e, &q.title),
    }
}

/// Static assets, embedded in the binary (`crate::assets`); pages reference them
/// with a content-hash version, so they can be cached for long.
#[handler]
pub fn asset(Path(name): Path<String>) -> Response {
    let Some(asset) = crate::assets::served(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    asset
        .response()
        .with_header("cache-control", "public, max-age=86400")
        .into_response()
}
