//! «Просмотрено» on the red-flag activity: `ONCRMTIMELINEITEMACTION` at
//! `/b24/events` (bitrix24-automation.md §A2). It completes the activity, which
//! clears the kanban badge.
//!
//! The application token only says the event came through some portal user's hands
//! (any tab user can read it), so it is not enough to touch a record: the event's
//! `auth[access_token]` — the pressing user's — must be confirmed by the portal on
//! the stored endpoint, as the deal tab confirms a doctor (`frame_auth::verify`), and
//! that user must be allowed to read the document. The activity must be one opros
//! created for that very document (its id is stored in the automation job's result).
//! Only then is the completion queued; the portal call is the outbox's.

use std::net::IpAddr;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde::Deserialize;
use serde_json::{Value, json};

use super::frame_auth::{self, FrameAuthError};
use super::install::PortalQuery;
use super::portals;
use crate::bitrix24::B24Error;
use crate::bitrix24::callback::{EventCall, FrameCall};
use crate::crm::{EntityRef, EntityType, InvitationId};
use crate::db::entities::{invitation, outbox_job, portal};
use crate::error::{ApiError, ErrorCode};
use crate::outbox::automation::SEEN_ACTION;
use crate::outbox::{self, Job};
use crate::state::AppState;

fn unknown_activity() -> ApiError {
    ApiError::not_found(
        ErrorCode::ActivityUnknown,
        "Это дело создано не приложением «Анкета пациента» для этой записи",
    )
}

fn not_confirmed() -> ApiError {
    ApiError::forbidden(
        ErrorCode::UserNotConfirmed,
        "Портал не подтвердил пользователя или его доступ к записи; ничего не изменено",
    )
}

fn positive(text: Option<&str>) -> Option<i64> {
    text?.trim().parse().ok().filter(|n: &i64| *n > 0)
}

/// Handles a pressed `restEvent` button.
pub async fn timeline_action(
    state: &AppState,
    ip: Option<IpAddr>,
    call: &EventCall,
) -> Result<Value, ApiError> {
    let p = portals::verify_app_token(
        &state.db,
        call.auth.member_id.as_deref(),
        call.auth.application_token.as_deref(),
    )
    .await?;
    let action = &call.data.timeline_action;
    if action.id.as_deref() != Some(SEEN_ACTION) {
        return Ok(json!({"ok": true, "ignored": action.id}));
    }
    let Some(kind) =
        positive(action.entity_type_id.as_deref()).and_then(EntityType::from_owner_type_id)
    else {
        return Err(unknown_activity());
    };
    let (Some(entity_id), Some(activity_id)) = (
        positive(action.entity_id.as_deref()),
        positive(action.activity_id.as_deref()),
    ) else {
        return Err(unknown_activity());
    };
    let entity = EntityRef {
        kind,
        id: entity_id,
    };
    // Ours, for this document: nothing else is asked about before that.
    let Some(invitation) = our_activity(state, &p, entity, activity_id).await? else {
        tracing::warn!(portal = %p.domain, "«Просмотрено» для дела, которое создали не мы");
        return Err(unknown_activity());
    };
    confirm_user(state, ip, &p, call, entity).await?;
    let job = Job::CompleteActivity {
        invitation,
        activity_id,
    };
    let (_turn, txn) = state.begin_write().await?;
    outbox::enqueue(
        &txn,
        Some(p.id),
        &job,
        &format!("activity:{}:{activity_id}:seen", p.id),
    )
    .await?;
    txn.commit().await?;
    state.nudge_outbox();
    tracing::info!(portal = %p.domain, "Отметки просмотрены; дело будет закрыто");
    Ok(json!({"ok": true}))
}

/// The invitation whose automation created `activity_id` on this document.
async fn our_activity(
    state: &AppState,
    p: &portal::Model,
    entity: EntityRef,
    activity_id: i64,
) -> Result<Option<InvitationId>, ApiError> {
    let invitations = invitation::Entity::find()
        .filter(invitation::Column::PortalId.eq(p.id))
        .filter(invitation::Column::EntityType.eq(entity.kind))
        .filter(invitation::Column::EntityId.eq(entity.id))
        .all(&state.db)
        .await?;
    let keys: Vec<String> = invitations
        .iter()
        .map(|i| format!("invitation:{}:automate", i.id))
        .collect();
    if keys.is_empty() {
        return Ok(None);
    }
    let jobs = outbox_job::Entity::find()
        .filter(outbox_job::Column::PortalId.eq(p.id))
        .filter(outbox_job::Column::IdempotencyKey.is_in(keys))
        .all(&state.db)
        .await?;
    Ok(jobs
        .iter()
        .find(|j| {
            j.result
                .as_ref()
                .and_then(|r| r.get("activity_id"))
                .and_then(|id| match id {
                    Value::Number(n) => n.as_i64(),
                    Value::String(s) => s.parse().ok(),
                    _ => None,
                })
                == Some(activity_id)
        })
        .and_then(|j| Job::deserialize(&j.payload).ok())
        .and_then(|job| job.invitation().cloned()))
}

/// The pressing user's token, confirmed on the stored endpoint, and that user's
/// right to read the document.
async fn confirm_user(
    state: &AppState,
    ip: Option<IpAddr>,
    p: &portal::Model,
    call: &EventCall,
    entity: EntityRef,
) -> Result<(), ApiError> {
    let frame = FrameCall {
        auth_id: call.auth.access_token.clone(),
        member_id: Some(p.member_id.clone()),
        ..FrameCall::default()
    };
    let caller = match frame_auth::verify(state, ip, &PortalQuery::default(), &frame).await {
        Ok(caller) => caller,
        Err(FrameAuthError::Unavailable(_)) => {
            return Err(ApiError::unavailable(
                ErrorCode::PortalUnavailable,
                "Не удалось проверить пользователя в Битрикс24, попробуйте позже",
            ));
        }
        Err(e) => {
            tracing::warn!(portal = %p.domain, error = %e, "«Просмотрено»: пользователь не подтверждён");
            return Err(not_confirmed());
        }
    };
    // The event names who pressed; the token must be that user's.
    if positive(call.data.timeline_action.user_id.as_deref()) != Some(caller.user_id) {
        return Err(not_confirmed());
    }
    let (method, params) = entity.read_call();
    match state
        .b24
        .call_to_verify(&caller.target, &method, params)
        .await
    {
        Ok(Value::Object(_)) => Ok(()),
        Err(e @ B24Error::VerifyBudgetSpent { .. }) => {
            tracing::warn!(portal = %p.domain, error = %e, "Бюджет проверок исчерпан");
            Err(ApiError::unavailable(
                ErrorCode::ChecksBudgetSpent,
                "Слишком много проверок за короткое время, попробуйте позже",
            ))
        }
        Err(e) if e.is_retryable() => Err(ApiError::unavailable(
            ErrorCode::PortalUnavailable,
            "Не удалось проверить доступ в Битрикс24, попробуйте позже",
        )),
        _ => Err(not_confirmed()),
    }
}
