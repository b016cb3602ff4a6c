//! The questionnaire editor's JSON API (`/b24/admin/questionnaires…`, the shapes in
//! ARCHITECTURE.md «Questionnaire editor API»): the admin page's script lists, reads,
//! creates, publishes, archives and exports the portal's questionnaires.
//!
//! Every call carries the admin page's signed session in `X-Opros-Session`: a header,
//! which a cross-site form cannot send, so no CSRF token is needed. The portal is
//! the session's, never a field of the body; another portal's questionnaire id is
//! answered exactly like a missing one. Writes queue the robot's select refresh in
//! their own transaction and forget this instance's cached catalog at once.

use chrono::Utc;
use poem::http::{StatusCode, header};
use poem::web::{Data, Path};
use poem::{Body, IntoResponse, Request, Response, handler};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::session::Session;
use crate::db::entities::portal;
use crate::error::{ApiError, ErrorCode};
use crate::outbox::{self, Job};
use crate::questionnaires::{self as store, Problem, Source, StoreError};
use crate::state::AppState;

/// The header that carries the admin page's session.
pub const SESSION_HEADER: &str = "X-Opros-Session";

/// Who is calling: a portal administrator's verified session.
pub(super) struct Admin {
    portal: i64,
    user: i64,
}

/// `GET /b24/admin/questionnaires`: the portal's own questionnaires and the templates.
#[handler]
pub async fn list(req: &Request, Data(state): Data<&AppState>) -> Response {
    finish(list_answer(req, state).await)
}

async fn list_answer(req: &Request, state: &AppState) -> Result<Response, Refusal> {
    let admin = admin(state, req).await?;
    let items = store::list(&state.db, admin.portal).await?;
    let templates = store::templates(&state.catalog());
    Ok(json_response(
        StatusCode::OK,
        &json!({"items": items, "templates": templates}),
    ))
}

/// `GET /b24/admin/questionnaires/{id}`: one questionnaire, its versions and its
/// latest definition.
#[handler]
pub async fn get(req: &Request, Path(id): Path<String>, Data(state): Data<&AppState>) -> Response {
    finish(get_answer(req, id, state).await)
}

async fn get_answer(req: &Request, id: String, state: &AppState) -> Result<Response, Refusal> {
    let admin = admin(state, req).await?;
    let detail = store::get(&state.db, admin.portal, parse_id(&id)?)
        .await?
        .ok_or_else(not_found)?;
    Ok(json_response(StatusCode::OK, &detail))
}

/// What `POST /b24/admin/questionnaires` takes: exactly one of the three.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    from_template: Option<String>,
    duplicate_of: Option<i64>,
    definition: Option<Value>,
}

/// `POST /b24/admin/questionnaires`: a new questionnaire from a template, a copy of
/// one of the portal's, or an imported definition; version 1 is published at once.
#[handler]
pub async fn create(req: &Request, body: Body, Data(state): Data<&AppState>) -> Response {
    finish(create_answer(req, body, state).await)
}

async fn create_answer(req: &Request, body: Body, state: &AppState) -> Result<Response, Refusal> {
    let admin = admin(state, req).await?;
    let body: CreateBody = json_body(body).await?;
    let source = match (body.from_template, body.duplicate_of, body.definition) {
        (Some(code), None, None) => Source::Template(code),
        (None, Some(id), None) => Source::Duplicate(id),
        (None, None, Some(definition)) => Source::Import(definition),
        _ => {
            return Err(bad_json(
                "Укажите ровно одно из полей: from_template, duplicate_of или definition",
            )
            .into());
        }
    };
    let (_turn, txn) = state.begin_write().await?;
    let templates = |code: &str| state.catalog().latest(code);
    let created = store::create(&txn, &templates, admin.portal, admin.user, source).await;
    let detail = created.map_err(|e| store_error(e, "Анкета не создана"))?;
    changed(state, txn, admin.portal).await?;
    tracing::info!(
        portal = admin.portal,
        user = admin.user,
        questionnaire = detail.id,
        "Анкета создана"
    );
    Ok(json_response(StatusCode::CREATED, &detail))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    definition: Value,
}

/// `POST /b24/admin/questionnaires/{id}/versions`: the next version, after the one
/// validator found nothing wrong; else 422 with every problem.
#[handler]
pub async fn publish(
    req: &Request,
    Path(id): Path<String>,
    body: Body,
    Data(state): Data<&AppState>,
) -> Response {
    finish(publish_answer(req, id, body, state).await)
}

async fn publish_answer(
    req: &Request,
    id: String,
    body: Body,
    state: &AppState,
) -> Result<Response, Refusal> {
    let admin = admin(state, req).await?;
    let id = parse_id(&id)?;
    let body: PublishBody = json_body(body).await?;
    let (_turn, txn) = state.begin_write().await?;
    let published = store::publish(&txn, admin.portal, id, admin.user, body.definition).await;
    let version = published.map_err(|e| store_error(e, "Анкета не опубликована"))?;
    changed(state, txn, admin.portal).await?;
    tracing::info!(
        portal = admin.portal,
        user = admin.user,
        questionnaire = id,
        version = version.version,
        "Опубликована новая версия анкеты"
    );
    Ok(json_response(StatusCode::CREATED, &version))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArchiveBody {
    archived: bool,
}

/// `POST /b24/admin/questionnaires/{id}/archive`: hidden from (or back in) the
/// robot's select; links already sent keep working.
#[handler]
pub async fn archive(
    req: &Request,
    Path(id): Path<String>,
    body: Body,
    Data(state): Data<&AppState>,
) -> Response {
    finish(archive_answer(req, id, body, state).await)
}

async fn archive_answer(
    req: &Request,
    id: String,
    body: Body,
    state: &AppState,
) -> Result<Response, Refusal> {
    let admin = admin(state, req).await?;
    let id = parse_id(&id)?;
    let body: ArchiveBody = json_body(body).await?;
    let (_turn, txn) = state.begin_write().await?;
    let archived = store::archive(&txn, admin.portal, id, admin.user, body.archived).await;
    let detail = archived.map_err(|e| store_error(e, "Анкета не изменена"))?;
    changed(state, txn, admin.portal).await?;
    tracing::info!(
        portal = admin.portal,
        user = admin.user,
        questionnaire = id,
        archived = body.archived,
        "Анкета перенесена в архив или возвращена"
    );
    Ok(json_response(StatusCode::OK, &detail))
}

/// `GET /b24/admin/questionnaires/{id}/export`: the latest definition as a
/// `SURVEYS_DIR` JSON file.
#[handler]
pub async fn export(
    req: &Request,
    Path(id): Path<String>,
    Data(state): Data<&AppState>,
) -> Response {
    finish(export_answer(req, id, state).await)
}

async fn export_answer(req: &Request, id: String, state: &AppState) -> Result<Response, Refusal> {
    let admin = admin(state, req).await?;
    let (code, text) = store::export(&state.db, admin.portal, parse_id(&id)?)
        .await?
        .ok_or_else(not_found)?;
    // The code is `[a-z0-9_]+` (the validator's rule): safe in the header as is.
    Ok(Response::builder()
        .status(StatusCode::OK)
        .content_type("application/json; charset=utf-8")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{code}.json\""),
        )
        .header(header::CACHE_CONTROL, "no-store")
        .body(text))
}

/// Commits a catalog change with the robot's select refresh, then forgets this
/// instance's cached catalog of the portal (the robot sees the change at once).
async fn changed(
    state: &AppState,
    txn: sea_orm::DatabaseTransaction,
    portal: i64,
) -> Result<(), ApiError> {
    let key = format!("robot_select:{portal}:{}", crate::db::random_id());
    outbox::enqueue(&txn, Some(portal), &Job::RefreshRobotSelect, &key).await?;
    txn.commit().await?;
    state.questionnaires.forget(portal);
    state.nudge_outbox();
    Ok(())
}

/// The session in [`SESSION_HEADER`], for an installed portal; else 401.
pub(super) async fn admin(state: &AppState, req: &Request) -> Result<Admin, ApiError> {
    let expired = || {
        ApiError::unauthorized(
            ErrorCode::SessionExpired,
            "Сеанс страницы приложения истёк или недействителен. Откройте приложение заново из Битрикс24.",
        )
    };
    let session = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| Session::verify_admin(state.session_key.expose(), s, Utc::now()).ok())
        .ok_or_else(|| {
            tracing::warn!("Запрос к редактору анкет без действующего сеанса администратора");
            expired()
        })?;
    use sea_orm::EntityTrait as _;
    match portal::Entity::find_by_id(session.portal_id)
        .one(&state.db)
        .await?
    {
        Some(p) if p.status == portal::INSTALLED => Ok(Admin {
            portal: p.id,
            user: session.user_id,
        }),
        _ => Err(expired()),
    }
}

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>().map_err(|_| not_found())
}

fn not_found() -> ApiError {
    ApiError::not_found(ErrorCode::QuestionnaireNotFound, "Анкета не найдена")
}

fn bad_json(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::BadJson, message)
}

/// The body as `T`; anything else (not JSON, too deep, other fields) is 400
/// `bad_json`. The size is capped before this by the service's body limit.
pub(super) async fn json_body<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = body
        .into_bytes()
        .await
        .map_err(|_| bad_json("Не удалось прочитать тело запроса"))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        // serde's text may quote the body; only where it broke is said.
        bad_json(format!(
            "Тело запроса — не JSON нужного вида (строка {}, столбец {})",
            e.line(),
            e.column()
        ))
    })
}

/// A refusal of the store, as the API answers it.
pub(super) enum Refusal {
    Api(ApiError),
    Problems(&'static str, Vec<Problem>),
}

pub(super) fn store_error(e: StoreError, what: &'static str) -> Refusal {
    match e {
        StoreError::NotFound => Refusal::Api(not_found()),
        StoreError::CodeTaken(code) => Refusal::Api(ApiError::conflict(
            ErrorCode::CodeTaken,
            format!("Анкета с кодом «{code}» уже есть; измените код или откройте её"),
        )),
        StoreError::Invalid(problems) => Refusal::Problems(what, problems),
        StoreError::Db(e) => Refusal::Api(e.into()),
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal::Api(e)
    }
}

impl From<sea_orm::DbErr> for Refusal {
    #[track_caller]
    fn from(e: sea_orm::DbErr) -> Self {
        Refusal::Api(e.into())
    }
}

/// 422 `invalid_definition`, every problem listed.
#[derive(Serialize)]
struct ProblemsBody<'a> {
    code: &'static str,
    message: String,
    problems: &'a [Problem],
}

pub(super) fn finish(result: Result<Response, Refusal>) -> Response {
    match result {
        Ok(r) => r,
        Err(Refusal::Api(e)) => e.into_response(),
        Err(Refusal::Problems(what, problems)) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &ProblemsBody {
                code: ErrorCode::InvalidDefinition.as_str(),
                message: format!("{what}: {}", count_errors(problems.len())),
                problems: &problems,
            },
        ),
    }
}

/// «1 ошибка», «3 ошибки», «5 ошибок».
fn count_errors(n: usize) -> String {
    let word = match (n % 10, n % 100) {
        (1, m) if m != 11 => "ошибка",
        (2..=4, m) if !(12..=14).contains(&m) => "ошибки",
        _ => "ошибок",
    };
    format!("{n} {word}")
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::builder()
            .status(status)
            .content_type("application/json; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-store")
            .body(body),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::count_errors;

    #[test]
    fn russian_plural_of_errors() {
        for (n, text) in [
            (1, "1 ошибка"),
            (2, "2 ошибки"),
            (4, "4 ошибки"),
            (5, "5 ошибок"),
            (11, "11 ошибок"),
            (12, "12 ошибок"),
            (21, "21 ошибка"),
            (22, "22 ошибки"),
            (111, "111 ошибок"),
        ] {
            assert_eq!(count_errors(n), text);
        }
    }
}
