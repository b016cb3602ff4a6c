//! `POST /b24/admin/questionnaires/preview`: the editor's live preview. The admin
//! page's script sends the definition being edited; it is read and checked exactly
//! as a publish would (`questionnaires::checked`: the schema, then the one validator)
//! and rendered by the patient page's own rendering, so the preview is what a phone
//! shows, without a link token, a draft or a working submit. Nothing is stored.
//!
//! Like the rest of the editor's API (`questionnaire_api`), the session travels in
//! the `X-Opros-Session` header, which a cross-site form cannot send.

use poem::web::{Data, Html};
use poem::{Body, IntoResponse, Request, Response, handler};
use serde::Deserialize;
use serde_json::Value;

use super::questionnaire_api::{Refusal, admin, finish, json_body, store_error};
use crate::questionnaires;
use crate::state::AppState;
use crate::survey::Questionnaire;

/// The patient page's rendering of a questionnaire for a clinic (`web::page`). The
/// route tree hands it in (`app::routes`): `web` is a handler module of this layer,
/// which `local_app` does not import.
#[derive(Clone, Copy)]
pub struct PatientPage(pub fn(&Questionnaire, &str) -> String);

/// The preview's own headers, should its HTML ever be opened as a page: no script
/// at all, a sandbox, and no framing by anybody else. (The editor shows it in a
/// sandboxed `srcdoc` frame, under the admin page's own policy.)
const PREVIEW_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
    form-action 'none'; base-uri 'none'; frame-ancestors 'self'; sandbox";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewBody {
    definition: Value,
}

#[handler]
pub async fn preview(
    req: &Request,
    body: Body,
    Data(state): Data<&AppState>,
    Data(page): Data<&PatientPage>,
) -> Response {
    match answer(req, body, state, *page).await {
        Ok(html) => Html(html)
            .with_header("content-security-policy", PREVIEW_CSP)
            .with_header("x-content-type-options", "nosniff")
            .with_header("referrer-policy", "no-referrer")
            .with_header("cache-control", "no-store")
            .into_response(),
        Err(refused) => finish(Err(refused)),
    }
}

async fn answer(
    req: &Request,
    body: Body,
    state: &AppState,
    page: PatientPage,
) -> Result<String, Refusal> {
    admin(state, req).await?;
    let body: PreviewBody = json_body(body).await?;
    // A preview is no version: it is numbered 1 whatever the editor holds.
    let definition = questionnaires::checked(body.definition, 1, None)
        .map_err(|e| store_error(e, "Предпросмотр не показан"))?;
    let clinic = state.config.clinic_name.clone().unwrap_or_default();
    Ok((page.0)(&definition, &clinic))
}
