//! Carrying out `ONAPPUNINSTALL` once the portal confirms it.
//!
//! The event's only proof of origin is the application token, which any user of the
//! portal can read from their own deal-tab POST. A genuine uninstall revokes our
//! tokens (protocol §7.3: any REST call or refresh fails with 401/`invalid_grant`);
//! a token that still works means the app is still installed and the event was
//! forged. So the job asks the portal first and deletes only on a confirmed refusal;
//! a portal that cannot be reached is asked again later, with the data kept.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;

use super::jobs::Outcome;
use super::run::{classify, retry};
use crate::bitrix24::{B24Error, Target};
use crate::db::entities::{invitation, outbox_job, portal, response};
use crate::state::AppState;

/// Whether an error says our tokens are revoked: what a genuine uninstall looks like
/// (protocol §7.3: 401 on calls, `invalid_grant` on refresh). `invalid_client` is
/// not among them: a mistyped `B24_CLIENT_SECRET` must never confirm a forged event.
fn revoked(e: &B24Error) -> bool {
    matches!(
        e,
        B24Error::RefreshRejected | B24Error::InvalidToken | B24Error::ExpiredToken
    )
}

/// Confirms the uninstall with the portal, then purges; a portal that still answers
/// keeps everything.
pub async fn confirm(
    state: &AppState,
    target: &Target,
    row: &outbox_job::Model,
    clean: bool,
    now: DateTime<Utc>,
) -> Outcome {
    let Some(portal_id) = row.portal_id else {
        return Outcome::Dead("задание без портала".into());
    };
    match state.b24.call(target, "app.info", json!({})).await {
        Ok(_) => {
            tracing::warn!(
                portal_id,
                "Событие удаления приложения не подтверждено: портал принимает наши токены; данные сохранены"
            );
            if let Err(e) = audit(state, portal_id, "uninstall_refused").await {
                return retry(
                    super::jobs::failures(row),
                    None,
                    format!("база данных: {e}"),
                    now,
                );
            }
            Outcome::Done(json!({"confirmed": false}))
        }
        Err(e) if revoked(&e) => match purge(state, portal_id, row.id, clean).await {
            Ok(deleted) => {
                tracing::info!(portal_id, clean, deleted, "Приложение удалено с портала");
                Outcome::Done(json!({"confirmed": true, "deleted": deleted}))
            }
            Err(e) => retry(
                super::jobs::failures(row),
                None,
                format!("база данных: {e}"),
                now,
            ),
        },
        Err(e) => classify(&e, row, now),
    }
}

async fn audit(state: &AppState, portal_id: i64, action: &str) -> Result<(), sea_orm::DbErr> {
    let (_turn, txn) = state.begin_write().await?;
    crate::db::audit(&txn, Some(portal_id), "bitrix24", action, None).await?;
    txn.commit().await
}

/// Drops the portal's tokens and its pending jobs (they can never run); with `clean`
/// its invitations, answers and PDFs as well. Returns the invitations deleted.
async fn purge(
    state: &AppState,
    portal_id: i64,
    own_job: i64,
    clean: bool,
) -> Result<u64, sea_orm::DbErr> {
    let (_turn, txn) = state.begin_write().await?;
    let Some(p) = portal::Entity::find_by_id(portal_id).one(&txn).await? else {
        return Ok(0);
    };
    let domain = p.domain.clone();
    let mut row: portal::ActiveModel = p.into();
    row.status = Set(portal::UNINSTALLED.to_owned());
    row.access_token = Set(None);
    row.refresh_token = Set(None);
    row.expires_at = Set(None);
    row.registration = Set(None);
    row.updated_at = Set(Utc::now());
    row.update(&txn).await?;
    // This job's own row stays: the worker records its outcome.
    let others = outbox_job::Column::Id.ne(own_job);
    outbox_job::Entity::delete_many()
        .filter(outbox_job::Column::PortalId.eq(portal_id))
        .filter(outbox_job::Column::DoneAt.is_null())
        .filter(others.clone())
        .exec(&txn)
        .await?;
    let mut deleted = 0;
    if clean {
        let ids: Vec<String> = invitation::Entity::find()
            .filter(invitation::Column::PortalId.eq(portal_id))
            .all(&txn)
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect();
        response::Entity::delete_many()
            .filter(response::Column::InvitationId.is_in(ids))
            .exec(&txn)
            .await?;
        deleted = invitation::Entity::delete_many()
            .filter(invitation::Column::PortalId.eq(portal_id))
            .exec(&txn)
            .await?
            .rows_affected;
        outbox_job::Entity::delete_many()
            .filter(outbox_job::Column::PortalId.eq(portal_id))
            .filter(others)
            .exec(&txn)
            .await?;
    }
    crate::db::audit(
        &txn,
        Some(portal_id),
        "bitrix24",
        if clean {
            "uninstall_clean"
        } else {
            "uninstall"
        },
        Some(&domain),
    )
    .await?;
    txn.commit().await?;
    Ok(deleted)
}
