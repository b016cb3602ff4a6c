//! Carrying out `ONAPPUNINSTALL` once the portal confirms it.
//!
//! The event's only proof of origin is the application token, which any user of the
//! portal can read from their own deal-tab POST. A genuine uninstall revokes our
//! tokens (protocol §7.3: any REST call or refresh fails with 401/`invalid_grant`);
//! a token that still works means the app is still installed and the event was
//! forged. So the job asks the portal first and deletes only on a confirmed refusal;
//! a portal that cannot be reached is asked again later, with the data kept. The
//! job never goes dead: asking again is harmless, and giving up would keep a
//! deleted portal's data for good.
//!
//! A portal has one pending confirmation; a later event with `data[CLEAN]=1` turns
//! its `clean` on (`local_app::events`), and the purge reads the flag again under the
//! portal's row lock, so a `CLEAN=0` queued first (forged or not) cannot make the
//! purge forget a `CLEAN=1`.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QuerySelect,
    sea_query::LockType,
};
use serde_json::json;

use super::Job;
use super::jobs::{JobOutcome, MAX_ATTEMPTS, failures};
use super::run::{classify, retry};
use crate::bitrix24::{B24Error, Target};
use crate::db::entities::{
    invitation, outbox_job, portal, questionnaire, questionnaire_version, response,
};
use crate::state::AppState;

/// Whether an error says our tokens are revoked: what a genuine uninstall looks like
/// (protocol §7.3: 401 on calls, `invalid_grant` on refresh; §10: `PORTAL_DELETED`
/// for a portal that is gone). `NO_AUTH_FOUND` counts only once a refresh was
/// refused too (see [`ask`]). `invalid_client` is not among them: a mistyped
/// `B24_CLIENT_SECRET` must never confirm a forged event.
fn revoked(e: &B24Error) -> bool {
    matches!(
        e,
        B24Error::RefreshRejected | B24Error::InvalidToken | B24Error::ExpiredToken
    ) || e.code() == Some("PORTAL_DELETED")
}

/// Asks the portal whether our tokens still work. The client refreshes once on
/// `invalid_token`/`expired_token` by itself, but not on `NO_AUTH_FOUND` (§10: a wrong
/// token or webhook code, "do not refresh-loop"): here one forced refresh tells a
/// revoked app (`invalid_grant`) from a token that merely went stale.
async fn ask(state: &AppState, target: &Target) -> Result<(), B24Error> {
    match state.b24.call(target, "app.info", json!({})).await {
        Err(B24Error::NoAuth) => {
            let Target::Portal { member_id } = target else {
                return Err(B24Error::NoAuth);
            };
            state.b24.renew(member_id).await?;
            state
                .b24
                .call(target, "app.info", json!({}))
                .await
                .map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

/// Asked again later, however often it failed: a pushback waits on the portal's
/// short schedule, anything else on the capped backoff, never dead.
fn ask_again(e: &B24Error, row: &outbox_job::Model, now: DateTime<Utc>) -> JobOutcome {
    if e.is_backpressure() {
        return classify(e, row, now);
    }
    let failures = Ord::min(failures(row), MAX_ATTEMPTS - 1);
    retry(failures, e.retry_after(), e.admin_message(), now)
}

fn db_retry(e: &sea_orm::DbErr, row: &outbox_job::Model, now: DateTime<Utc>) -> JobOutcome {
    let failures = Ord::min(failures(row), MAX_ATTEMPTS - 1);
    retry(failures, None, format!("база данных: {e}"), now)
}

/// Confirms the uninstall with the portal, then purges; a portal that still answers
/// keeps everything.
pub async fn confirm(
    state: &AppState,
    target: &Target,
    row: &outbox_job::Model,
    clean: bool,
    now: DateTime<Utc>,
) -> JobOutcome {
    let Some(portal_id) = row.portal_id else {
        return JobOutcome::Dead("задание без портала".into());
    };
    match ask(state, target).await {
        Ok(()) => {
            tracing::warn!(
                portal_id,
                "Событие удаления приложения не подтверждено: портал принимает наши токены; данные сохранены"
            );
            if let Err(e) = audit(state, portal_id, "uninstall_refused").await {
                return db_retry(&e, row, now);
            }
            JobOutcome::Done(json!({"confirmed": false}))
        }
        Err(e) if revoked(&e) => purged(state, portal_id, row, clean, now).await,
        Err(e) => {
            tracing::warn!(portal_id, error = %e, "Удаление приложения пока не подтверждено; спросим портал позже");
            ask_again(&e, row, now)
        }
    }
}

/// A confirmation for a portal already marked uninstalled (its tokens are gone, so
/// nothing is left to ask): a `CLEAN=1` that came after the purge of a `CLEAN=0`.
pub async fn after_uninstall(
    state: &AppState,
    row: &outbox_job::Model,
    clean: bool,
    now: DateTime<Utc>,
) -> JobOutcome {
    match row.portal_id {
        Some(portal_id) => purged(state, portal_id, row, clean, now).await,
        None => JobOutcome::Dead("задание без портала".into()),
    }
}

async fn purged(
    state: &AppState,
    portal_id: i64,
    row: &outbox_job::Model,
    clean: bool,
    now: DateTime<Utc>,
) -> JobOutcome {
    match purge(state, portal_id, row.id, clean).await {
        Ok((clean, deleted)) => {
            tracing::info!(portal_id, clean, deleted, "Приложение удалено с портала");
            JobOutcome::Done(json!({"confirmed": true, "clean": clean, "deleted": deleted}))
        }
        Err(e) => db_retry(&e, row, now),
    }
}

async fn audit(state: &AppState, portal_id: i64, action: &str) -> Result<(), sea_orm::DbErr> {
    let (_turn, txn) = state.begin_write().await?;
    crate::db::audit(&txn, Some(portal_id), "bitrix24", action, None).await?;
    txn.commit().await
}

/// Drops the portal's tokens and its pending jobs (they can never run); with `clean`
/// (this job's, or any pending confirmation's: an event may have turned it on since
/// this job was claimed) its invitations, answers and PDFs as well. Returns the
/// `clean` applied and the invitations deleted.
async fn purge(
    state: &AppState,
    portal_id: i64,
    own_job: i64,
    clean: bool,
) -> Result<(bool, u64), sea_orm::DbErr> {
    let (_turn, txn) = state.begin_write().await?;
    // Locks the portal's row (PostgreSQL) before the flags are read: the event
    // handler takes the same lock before it turns a pending job's `clean` on, so
    // either it sees the portal uninstalled or this sees its flag.
    let Some(p) = portal::Entity::find_by_id(portal_id)
        .lock(LockType::NoKeyUpdate)
        .one(&txn)
        .await?
    else {
        return Ok((clean, 0));
    };
    let clean = clean
        || outbox_job::Entity::find()
            .filter(outbox_job::Column::PortalId.eq(portal_id))
            .filter(outbox_job::Column::Kind.eq(Job::ConfirmUninstall { clean }.kind()))
            .filter(outbox_job::Column::DoneAt.is_null())
            .filter(outbox_job::Column::DeadAt.is_null())
            .all(&txn)
            .await?
            .into_iter()
            .any(|j| {
                matches!(
                    serde_json::from_value::<Job>(j.payload),
                    Ok(Job::ConfirmUninstall { clean: true })
                )
            });
    let domain = p.domain.clone();
    let mut row: portal::ActiveModel = p.into();
    row.status = Set(portal::UNINSTALLED);
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
        // The clinic's own questionnaires go with its data; nothing refers to them
        // once its invitations are gone.
        let questionnaires: Vec<i64> = questionnaire::Entity::find()
            .filter(questionnaire::Column::PortalId.eq(portal_id))
            .all(&txn)
            .await?
            .into_iter()
            .map(|q| q.id)
            .collect();
        questionnaire_version::Entity::delete_many()
            .filter(questionnaire_version::Column::QuestionnaireId.is_in(questionnaires))
            .exec(&txn)
            .await?;
        questionnaire::Entity::delete_many()
            .filter(questionnaire::Column::PortalId.eq(portal_id))
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
    state.questionnaires.forget(portal_id);
    Ok((clean, deleted))
}
