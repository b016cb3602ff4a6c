//! `POST /b24/events`: events bound by the application (protocol §7).
//!
//! An event carries only the application token as proof of origin, and every user of
//! the portal can read that token from their own deal-tab POST. So the token alone
//! never causes a destructive or cross-deal effect: an uninstall is confirmed with
//! the portal by an outbox job before anything is dropped, and a new deal or lead is
//! read back from the portal before its link field is written.

use chrono::{DateTime, Utc};
use poem::web::{Data, Json};
use poem::{IntoResponse, Response, handler};
use sea_orm::sea_query::{Expr, LockType};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{install, portals};
use crate::bitrix24::callback::{Callback, EventCall};
use crate::bitrix24::{B24Error, Target};
use crate::db::entities::{outbox_job, portal};
use crate::error::{ApiError, ErrorCode};
use crate::invitations::{Channel, EntityRef, EntityType};
use crate::outbox::{self, Job};
use crate::secret::constant_time_eq;
use crate::state::AppState;

/// How old a deal or lead may be when its `ONCRMDEALADD`/`ONCRMLEADADD` arrives.
/// Bitrix24's queue delivers within seconds, minutes when busy; a record older than
/// this was not "just created", so the event is not taken as a reason to write.
const NEW_RECORD_WINDOW: chrono::Duration = chrono::Duration::hours(1);

#[handler]
pub async fn events(
    req: &poem::Request,
    Callback(call): Callback<EventCall>,
    Data(state): Data<&AppState>,
) -> Response {
    let event = call.event.clone().unwrap_or_default().to_ascii_uppercase();
    let result = match event.as_str() {
        // Both may make the service ask the OAuth server or the portal: under the
        // same guard as the install page.
        "ONAPPINSTALL" => {
            let key = install::install_key(call.auth.domain.as_deref());
            let run = install::on_app_install(state, &call.auth);
            return install::guarded(state, req, key, |r| r.json(), run).await;
        }
        "ONAPPUPDATE" => {
            let key = call.auth.member_id.as_ref().map(|m| format!("update:{m}"));
            let run = install::on_app_update(state, &call.auth);
            return install::guarded(state, req, key, |r| r.json(), run).await;
        }
        "ONAPPUNINSTALL" => uninstall(state, &call).await,
        "ONCRMDEALADD" | "ONCRMLEADADD" => crm_added(state, &call, &event).await,
        "ONCRMTIMELINEITEMACTION" => {
            let ip = super::verify_guard::client_ip(req);
            super::seen::timeline_action(state, ip, &call).await
        }
        "" => Err(ApiError::bad_request(
            ErrorCode::EventMissing,
            "В запросе нет поля event",
        )),
        other => {
            tracing::debug!(event = %other, "Событие не обрабатывается");
            Ok(json!({"ok": true, "ignored": other}))
        }
    };
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// protocol §7.3: no tokens arrive, only `application_token`. Nothing changes here:
/// an outbox job asks the portal whether our tokens still work (after a genuine
/// uninstall they do not) and only then drops the tokens and, with `data[CLEAN]=1`,
/// the portal's invitations and answers (see `outbox::uninstall`). Until then the
/// portal keeps working, so a forged event changes nothing.
///
/// A portal has one pending confirmation, whose `clean` is on once any event asked
/// for it: a `CLEAN=0` queued first cannot make a `CLEAN=1` be forgotten. A
/// `CLEAN=1` for a portal already marked uninstalled (its `CLEAN=0` was purged
/// first) is still taken, shortly after, with the stored application token.
async fn uninstall(state: &AppState, call: &EventCall) -> Result<Value, ApiError> {
    let clean = call
        .data
        .clean
        .as_deref()
        .is_some_and(|c| c == "1" || c.eq_ignore_ascii_case("Y"));
    let (member_id, token) = (
        call.auth.member_id.as_deref(),
        call.auth.application_token.as_deref(),
    );
    let p = match portals::verify_app_token(&state.db, member_id, token).await {
        Ok(p) => p,
        Err(refused) if clean => uninstalled_portal(state, member_id, token)
            .await?
            .ok_or(refused)?,
        Err(refused) => return Err(refused),
    };
    let job = Job::ConfirmUninstall { clean };
    let (_turn, txn) = state.begin_write().await?;
    // The portal's row lock orders this against the purge (which takes it too): either
    // the purge has run and the portal reads uninstalled here, or it has not and
    // will read the flag set here.
    let Some(p) = portal::Entity::find_by_id(p.id)
        .lock(LockType::NoKeyUpdate)
        .one(&txn)
        .await?
    else {
        return Err(ApiError::forbidden(
            ErrorCode::PortalUninstalled,
            "Приложение удалено с этого портала; установите его заново",
        ));
    };
    let pending = outbox_job::Entity::find()
        .filter(outbox_job::Column::PortalId.eq(p.id))
        .filter(outbox_job::Column::Kind.eq(job.kind()))
        .filter(outbox_job::Column::DoneAt.is_null())
        .filter(outbox_job::Column::DeadAt.is_null())
        .all(&txn)
        .await?;
    let pending_clean = pending.iter().any(|row| {
        Job::deserialize(&row.payload).ok() == Some(Job::ConfirmUninstall { clean: true })
    });
    if p.status == portal::INSTALLED && !pending.is_empty() {
        // More of the same event (repeats, or a flood of forged ones) add nothing;
        // a `CLEAN=1` turns the pending one's flag on.
        if clean && !pending_clean {
            let payload =
                serde_json::to_value(&job).map_err(|e| ApiError::internal(e.to_string()))?;
            outbox_job::Entity::update_many()
                .col_expr(outbox_job::Column::Payload, Expr::value(payload))
                .filter(outbox_job::Column::Id.is_in(pending.iter().map(|j| j.id)))
                .exec(&txn)
                .await?;
        }
    } else if p.status == portal::INSTALLED || (clean && !pending_clean) {
        // Uninstalled already: a job of its own, which purges without asking (the
        // tokens are gone), since the pending one may have purged already.
        let key = format!(
            "uninstall:{}:{}:{}",
            p.id,
            u8::from(clean),
            Utc::now().timestamp_micros()
        );
        outbox::enqueue(&txn, Some(p.id), &job, &key).await?;
    }
    crate::db::audit(
        &txn,
        Some(p.id),
        "bitrix24",
        "uninstall_received",
        Some(&p.domain),
    )
    .await?;
    txn.commit().await?;
    state.nudge_outbox();
    tracing::info!(portal = %p.domain, clean, "Получено событие удаления приложения; проверяем его у портала");
    Ok(json!({"ok": true}))
}

/// How long after its uninstall a portal still takes a `CLEAN=1`: Bitrix24 sends the
/// event at once (protocol §7.1), so a late one is not the admin's.
const CLEAN_AFTER_UNINSTALL: chrono::Duration = chrono::Duration::hours(1);

/// The portal this `CLEAN=1` is for, if it was uninstalled within
/// [`CLEAN_AFTER_UNINSTALL`] and the application token is the stored one.
async fn uninstalled_portal(
    state: &AppState,
    member_id: Option<&str>,
    token: Option<&str>,
) -> Result<Option<portal::Model>, ApiError> {
    let (Some(member_id), Some(token)) = (member_id, token) else {
        return Ok(None);
    };
    let found = portals::by_member(&state.db, member_id).await?;
    Ok(found.filter(|p| {
        p.status == portal::UNINSTALLED
            && Utc::now() - p.updated_at < CLEAN_AFTER_UNINSTALL
            && p.application_token
                .as_deref()
                .is_some_and(|stored| constant_time_eq(stored.as_bytes(), token.as_bytes()))
    }))
}

/// `ONCRMDEALADD`/`ONCRMLEADADD` bound by the application: a link for the new deal,
/// once the portal confirms the record exists, was just created and has no link yet.
async fn crm_added(state: &AppState, call: &EventCall, event: &str) -> Result<Value, ApiError> {
    let p = portals::verify_app_token(
        &state.db,
        call.auth.member_id.as_deref(),
        call.auth.application_token.as_deref(),
    )
    .await?;
    let kind = if event == "ONCRMLEADADD" {
        EntityType::Lead
    } else {
        EntityType::Deal
    };
    let id: i64 = call
        .data
        .fields
        .id
        .as_deref()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            ApiError::bad_request(ErrorCode::IdMissing, "В событии нет data[FIELDS][ID]")
        })?;
    let entity = EntityRef { kind, id };
    tracing::info!(portal = %p.domain, event, "Получен вебхук от Битрикс24");
    confirm_new_record(state, &p, entity, Utc::now()).await?;
    let inv = crate::invitations::issue::create_for_new_entity(
        state,
        Some(p.id),
        Channel::App,
        entity,
        &format!("event:{}:{}:{}", p.id, kind, id),
    )
    .await?;
    Ok(json!({"ok": true, "survey_id": inv.id}))
}

/// Reads the record with the portal's own token: it must exist, be created within
/// [`NEW_RECORD_WINDOW`] and carry no link yet. Anything else is refused, so a
/// forged event cannot overwrite the link of an existing deal. Anyone with the
/// application token (any tab user) can send such events, so the read is a check
/// like the frames' (`B24Client::call_to_verify`): it draws on the checks' own small
/// share of the portal's budget, never on what robots and the outbox use, and a
/// flood of events is refused once that share is spent.
async fn confirm_new_record(
    state: &AppState,
    p: &portal::Model,
    entity: EntityRef,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let (method, params) = entity.read_call();
    let target = Target::Portal {
        member_id: p.member_id.clone(),
    };
    let record = match state.b24.call_to_verify(&target, &method, params).await {
        Ok(record) => crate::crm::document::record(entity.kind, record),
        Err(B24Error::VerifyBudgetSpent { .. }) => {
            tracing::warn!(portal = %p.domain, "Бюджет проверок исчерпан; событие о новой записи не проверено");
            return Err(ApiError::unavailable(
                ErrorCode::ChecksBudgetSpent,
                "Слишком много событий за короткое время; ссылка не записана, попробуйте позже",
            ));
        }
        Err(e) if e.is_not_found() || e.is_access_denied() => {
            return Err(not_confirmed(p, entity, "запись не найдена"));
        }
        Err(e) => {
            tracing::warn!(error = %e, portal = %p.domain, "Не удалось проверить событие у портала");
            return Err(ApiError::unavailable(
                ErrorCode::PortalUnavailable,
                "Не удалось проверить событие в Битрикс24, попробуйте позже",
            ));
        }
    };
    let created = record
        .get("DATE_CREATE")
        .and_then(Value::as_str)
        .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
        .map(|d| d.with_timezone(&Utc));
    let fresh = created
        .is_some_and(|c| c <= now + chrono::Duration::minutes(5) && now - c <= NEW_RECORD_WINDOW);
    if !fresh {
        return Err(not_confirmed(p, entity, "запись создана не сейчас"));
    }
    let has_link = record
        .get(&state.config.link_field)
        .and_then(Value::as_str)
        .is_some_and(|l| !l.trim().is_empty());
    if has_link {
        return Err(not_confirmed(p, entity, "ссылка уже записана"));
    }
    Ok(())
}

fn not_confirmed(p: &portal::Model, entity: EntityRef, why: &str) -> ApiError {
    tracing::warn!(
        portal = %p.domain,
        entity = %format!("{}_{}", entity.kind, entity.id),
        why,
        "Событие о новой записи не подтверждено порталом; ссылка не записана"
    );
    ApiError::conflict(
        ErrorCode::EventNotConfirmed,
        "Портал не подтвердил, что запись только что создана; ссылка не записана",
    )
}
