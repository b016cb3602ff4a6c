//! The «Анкета пациента» tab of a deal or lead card (protocol §6): `POST
//! /b24/placement/deal-tab` verifies the doctor with the portal and reads the deal with
//! the doctor's own token before anything is shown; the page's follow-up requests
//! (`POST /b24/tab/report/{invitation}`, `POST /b24/tab/new-link`) carry the signed
//! session it was given and work only for that portal and that document.

use chrono::Utc;
use poem::http::StatusCode;
use poem::web::{Data, Path};
use poem::{Body, Response, handler};
use sea_orm::EntityTrait;
use serde::Deserialize;
use serde_json::Value;

use super::frame_auth::{self, FrameCaller};
use super::frame_post::VerifiedFrame;
use super::inbound::own_form;
use super::session::{Scope, Session, SessionError};
use super::{page, tab_view};
use crate::bitrix24::callback::FrameCall;
use crate::bitrix24::form;
use crate::db::entities::{invitation, portal, response};
use crate::invitations::{Channel, EntityRef, EntityType};
use crate::state::AppState;

/// The iframe POST of a deal or lead tab.
#[handler]
pub async fn deal_tab(
    VerifiedFrame { caller, call }: VerifiedFrame,
    Data(state): Data<&AppState>,
) -> Response {
    let shown = show_tab(state, &caller, &call).await;
    page::frame_for(shown, page::portal_origin(&caller.portal).as_deref())
}

/// The tab for a confirmed caller.
async fn show_tab(state: &AppState, caller: &FrameCaller, call: &FrameCall) -> Response {
    let Some(entity) = entity_of(call) else {
        return page::error(
            StatusCode::BAD_REQUEST,
            "Битрикс24 не передал номер сделки. Откройте вкладку из карточки сделки.",
        );
    };
    if let Err(response) = check_read_access(state, caller, entity).await {
        return response;
    }
    let session = Session::new(
        caller.portal.id,
        caller.user_id,
        Scope::Entity(entity),
        Utc::now(),
    );
    tracing::info!(
        portal = %caller.portal.domain,
        user = caller.user_id,
        entity = %format!("{}_{}", entity.kind, entity.id),
        "Открыта вкладка «Анкета пациента»"
    );
    render(state, &caller.portal, &session, None).await
}

/// `PLACEMENT` decides the kind, `PLACEMENT_OPTIONS.ID` the document (§6.2); the
/// portal is asked about it before anything is shown.
/// A placement we did not bind (another card's tab) names no document we know:
/// it is refused, never taken for a deal with the same number.
fn entity_of(call: &FrameCall) -> Option<EntityRef> {
    let kind = EntityType::from_tab_placement(call.placement.as_deref()?)?;
    let id = call.placement_id()?;
    Some(EntityRef { kind, id })
}

/// protocol §11 (4): the deal is read with the doctor's token, so the portal applies
/// the doctor's CRM rights. Any refusal shows nothing.
async fn check_read_access(
    state: &AppState,
    caller: &FrameCaller,
    entity: EntityRef,
) -> Result<(), Response> {
    if state.verify_guard.may_read(&caller.token, entity) {
        return Ok(());
    }
    let (method, params) = entity.read_call();
    match state
        .b24
        .call_to_verify(&caller.target, &method, params)
        .await
    {
        Ok(Value::Object(_)) => {
            state.verify_guard.note_readable(&caller.token, entity);
            Ok(())
        }
        Err(e @ crate::bitrix24::B24Error::VerifyBudgetSpent { .. }) => {
            Err(frame_auth::refused(&caller.portal, e).error_page())
        }
        Err(e) if e.is_retryable() => {
            tracing::warn!(portal = %caller.portal.domain, error = %e, "Портал не ответил на чтение сделки");
            Err(page::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Битрикс24 не ответил. Попробуйте открыть вкладку ещё раз через минуту.",
            ))
        }
        other => {
            tracing::warn!(
                portal = %caller.portal.domain,
                user = caller.user_id,
                code = ?other.err().and_then(|e| e.code().map(str::to_owned)),
                "Нет доступа к документу вкладки"
            );
            Err(page::error(
                StatusCode::FORBIDDEN,
                &format!(
                    "Нет доступа к {}: Битрикс24 не разрешает вам просматривать эту запись.",
                    entity.kind.to_whom()
                ),
            ))
        }
    }
}

async fn render(
    state: &AppState,
    portal: &portal::Model,
    session: &Session,
    fresh_link: Option<&str>,
) -> Response {
    let Scope::Entity(entity) = session.scope else {
        return forbidden();
    };
    match tab_view::tab_page(
        state,
        portal.id,
        entity,
        &session.sign(state.session_key.expose()),
        fresh_link,
    )
    .await
    {
        Ok(html) => page::respond(StatusCode::OK, html),
        Err(e) => {
            tracing::error!(error = %e, "Не удалось показать вкладку");
            page::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Не удалось загрузить анкеты. Попробуйте ещё раз.",
            )
        }
    }
}

fn forbidden() -> Response {
    page::error(
        StatusCode::FORBIDDEN,
        "Сеанс вкладки недействителен или истёк. Закройте вкладку и откройте её снова из карточки сделки.",
    )
}

/// The tab's session, checked: genuine, unexpired, for a tab, on a portal still installed.
async fn tab_session(
    state: &AppState,
    token: Option<&str>,
) -> Result<(Session, EntityRef, portal::Model), Response> {
    let token = token.ok_or_else(forbidden)?;
    let (session, entity) = Session::verify_tab(state.session_key.expose(), token, Utc::now())
        .map_err(|e: SessionError| {
            tracing::warn!(reason = %e, "Отклонён запрос вкладки с негодным сеансом");
            forbidden()
        })?;
    let portal = portal::Entity::find_by_id(session.portal_id)
        .one(&state.db)
        .await
        .ok()
        .flatten()
        .filter(|p| p.status == portal::INSTALLED)
        .ok_or_else(forbidden)?;
    Ok((session, entity, portal))
}

/// The PDF of one invitation, for the session of its own document only. The tab's
/// form posts the session (`s`, and `download` for an attachment), so it never
/// stands in a URL. The PDF opens in a browser tab of its own and may not be framed.
#[handler]
pub async fn report(
    Path(invitation_id): Path<String>,
    body: Body,
    Data(state): Data<&AppState>,
) -> Response {
    let form: TabForm = match body.into_bytes().await {
        Ok(bytes) => own_form(&bytes),
        Err(_) => TabForm::default(),
    };
    let response = report_of(state, invitation_id, &form).await;
    page::frame_for(response, None)
}

/// What the tab's forms post (`tab_view`): the signed session, and `download` on the
/// PDF button that saves instead of opening.
#[derive(Debug, Default, Deserialize)]
struct TabForm {
    #[serde(default, deserialize_with = "form::text")]
    s: Option<String>,
    #[serde(default, deserialize_with = "form::text")]
    download: Option<String>,
}

async fn report_of(state: &AppState, invitation_id: String, form: &TabForm) -> Response {
    let (session, entity, _) = match tab_session(state, form.s.as_deref()).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let inv = match invitation::Entity::find_by_id(invitation_id)
        .one(&state.db)
        .await
    {
        Ok(inv) => inv,
        Err(e) => {
            tracing::error!(error = %e, "База данных недоступна");
            return page::error(StatusCode::SERVICE_UNAVAILABLE, "База данных недоступна");
        }
    };
    let Some(inv) =
        inv.filter(|i| i.portal_id == Some(session.portal_id) && EntityRef::from_row(i) == entity)
    else {
        tracing::warn!("PDF запрошен с сеансом другой сделки");
        return forbidden();
    };
    let stored = response::Entity::find_by_id(inv.id.clone())
        .one(&state.db)
        .await
        .ok()
        .flatten();
    let pdf = match &stored {
        Some(r) => crate::completion::stored_or_rendered_pdf(state, &inv, r)
            .await
            .zip(r.submitted_at),
        None => None,
    };
    let Some((bytes, submitted_at)) = pdf else {
        return page::error(
            StatusCode::NOT_FOUND,
            "PDF ещё не готов: пациент не заполнил анкету.",
        );
    };
    let name = crate::completion::pdf_file_name(&inv, inv.completed_at.unwrap_or(submitted_at));
    let disposition = if form.download.is_some() {
        "attachment"
    } else {
        "inline"
    };
    Response::builder()
        .content_type("application/pdf")
        .header(
            "content-disposition",
            format!("{disposition}; filename=\"{name}\""),
        )
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .body(bytes)
}

/// «Отправить новую ссылку»: a fresh invitation for the session's document.
#[handler]
pub async fn new_link(body: Body, Data(state): Data<&AppState>) -> Response {
    let Ok(bytes) = body.into_bytes().await else {
        return page::error(StatusCode::BAD_REQUEST, "Не удалось прочитать запрос");
    };
    let form: TabForm = own_form(&bytes);
    let token = form.s;
    let origin = page::session_origin(state, token.as_deref()).await;
    let response = issue_new_link(state, token.as_deref()).await;
    page::frame_for(response, origin.as_deref())
}

async fn issue_new_link(state: &AppState, token: Option<&str>) -> Response {
    let (session, entity, portal) = match tab_session(state, token).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let days = match crate::invitations::issue::lifetime_for(state, Some(portal.id)).await {
        Ok(d) => d,
        Err(_) => state.config.link_days,
    };
    let inv = match crate::invitations::issue::issue(
        state,
        crate::invitations::issue::Request {
            portal_id: Some(portal.id),
            channel: Channel::App,
            entity,
            given_name: None,
            reuse_active: false,
            lifetime_days: days,
            dedupe_key: None,
            questionnaire: None,
            robot_event: None,
        },
    )
    .await
    {
        Ok((inv, _)) => inv,
        Err(e) => {
            tracing::error!(error = %e.body().message, "Не удалось создать ссылку из вкладки");
            return page::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Не удалось создать ссылку. Попробуйте ещё раз.",
            );
        }
    };
    let _ = crate::db::audit(
        &state.db,
        Some(portal.id),
        &format!("user:{}", session.user_id),
        "tab_new_link",
        Some(&inv.id),
    )
    .await;
    let link = crate::invitations::issue::link_of(state, &inv);
    render(state, &portal, &session, Some(&link)).await
}
