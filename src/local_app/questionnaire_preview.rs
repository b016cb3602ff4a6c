//! `POST /b24/admin/questionnaires/preview`: the editor's live preview. The admin
//! page's script sends the definition being edited; it is read into the one schema,
//! checked by the one validator (`Questionnaire::check`) and rendered by the patient
//! page's own rendering, so the preview is what a phone shows, without a link token,
//! a draft or a working submit. Nothing is stored.
//!
//! The session travels in the `X-Opros-Session` header, not a cookie: a cross-site
//! form cannot send a header, so the route needs no CSRF token.

use chrono::Utc;
use poem::http::{HeaderMap, StatusCode};
use poem::web::{Data, Html};
use poem::{Body, IntoResponse, Response, handler};
use sea_orm::EntityTrait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::session::Session;
use crate::db::entities::portal;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::survey::{DefinitionProblem, Questionnaire};

/// The header the editor's calls carry the admin page's signed session in.
pub const SESSION_HEADER: &str = "x-opros-session";

/// The patient page's rendering of a questionnaire for a clinic (`web::page`). The
/// route tree hands it in (`app::routes`): `web` is a handler module of this layer,
/// which `local_app` does not import.
#[derive(Clone, Copy)]
pub struct PatientPage(pub fn(&Questionnaire, &str) -> String);

/// The preview's own headers, should its HTML ever be opened as a page: no script
/// at all, a sandbox, and no framing by anybody else.
const PREVIEW_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
    form-action 'none'; base-uri 'none'; frame-ancestors 'self'; sandbox";

#[derive(Deserialize)]
struct PreviewBody {
    definition: Value,
}

#[handler]
pub async fn preview(
    headers: &HeaderMap,
    body: Body,
    Data(state): Data<&AppState>,
    Data(page): Data<&PatientPage>,
) -> Response {
    match answer(state, headers, body, *page).await {
        Ok(html) => Html(html)
            .with_header("content-security-policy", PREVIEW_CSP)
            .with_header("x-content-type-options", "nosniff")
            .with_header("referrer-policy", "no-referrer")
            .with_header("cache-control", "no-store")
            .into_response(),
        Err(refusal) => refusal,
    }
}

/// Why no preview: a refusal, or the definition's problems.
enum Refused {
    Api(ApiError),
    Problems(Vec<DefinitionProblem>),
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused::Api(e)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Api(e) => e.into_response(),
            Refused::Problems(problems) => invalid(&problems),
        }
    }
}

async fn answer(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    page: PatientPage,
) -> Result<String, Response> {
    checked(state, headers, body)
        .await
        .map(|definition| {
            let clinic = state.config.clinic_name.clone().unwrap_or_default();
            (page.0)(&definition, &clinic)
        })
        .map_err(IntoResponse::into_response)
}

/// The definition of an admin's request, if the one validator finds nothing wrong.
async fn checked(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Questionnaire, Refused> {
    admin_portal(state, headers).await?;
    let bytes = body
        .into_bytes()
        .await
        .map_err(|_| ApiError::bad_request(ErrorCode::BadBody, "Не удалось прочитать запрос"))?;
    let definition = definition(&bytes)?;
    let problems = definition.check();
    if problems.is_empty() {
        Ok(definition)
    } else {
        Err(Refused::Problems(problems))
    }
}

/// The session's portal, installed; anything else is one 401.
async fn admin_portal(state: &AppState, headers: &HeaderMap) -> Result<portal::Model, ApiError> {
    let expired = || {
        ApiError::unauthorized(
            ErrorCode::SessionExpired,
            "Сеанс страницы приложения истёк или недействителен. Откройте приложение заново из Битрикс24.",
        )
    };
    let token = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(expired)?;
    let session = Session::verify_admin(state.session_key.expose(), token, Utc::now())
        .map_err(|_| expired())?;
    match portal::Entity::find_by_id(session.portal_id)
        .one(&state.db)
        .await?
    {
        Some(p) if p.status == portal::INSTALLED => Ok(p),
        _ => Err(expired()),
    }
}

/// `{"definition": {…}}` read into the schema: not JSON is 400, a definition that
/// does not fit the schema is 422 with the reason as its one problem.
fn definition(bytes: &[u8]) -> Result<Questionnaire, Refused> {
    let body: PreviewBody = serde_json::from_slice(bytes).map_err(|e| {
        let message = if e.is_data() {
            "Ожидается JSON вида {\"definition\": {…}}"
        } else {
            "Тело запроса — не JSON"
        };
        ApiError::bad_request(ErrorCode::BadJson, message)
    })?;
    serde_json::from_value(body.definition).map_err(|e| {
        Refused::Problems(vec![DefinitionProblem {
            place: "definition".to_owned(),
            code: "bad_shape",
            reason: format!("анкета не соответствует схеме: {e}"),
        }])
    })
}

/// 422 `invalid_definition` with every problem, in the editor API's shape.
fn invalid(problems: &[DefinitionProblem]) -> Response {
    let body = json!({
        "code": ErrorCode::InvalidDefinition.as_str(),
        "message": format!("В анкете есть ошибки: {}", problems.len()),
        "problems": problems
            .iter()
            .map(|p| json!({"place": p.place, "code": p.code, "reason": p.reason}))
            .collect::<Vec<_>>(),
    });
    poem::web::Json(body)
        .with_status(StatusCode::UNPROCESSABLE_ENTITY)
        .into_response()
}
