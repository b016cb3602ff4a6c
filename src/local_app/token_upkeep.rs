//! Keeps idle portals installed. A refresh token lives 180 days and only a refresh
//! replaces it (protocol §2.1; older docs said 28 days); a clinic that pauses its
//! questionnaires for months must not come back to a dead installation. Portals
//! whose tokens have not been refreshed for a week are refreshed here, on a timer.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tokio_util::sync::CancellationToken;

use crate::db::entities::portal;
use crate::state::AppState;

/// Far inside the refresh token's lifetime even by the older 28 days, so a few
/// failed rounds change nothing.
const STALE_AFTER: TimeDelta = TimeDelta::days(7);
const EVERY: Duration = Duration::from_secs(6 * 3600);

/// Runs [`renew_stale`] now and every six hours until cancelled.
pub async fn run(state: AppState, cancel: CancellationToken) {
    loop {
        renew_stale(&state, &cancel).await;
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Refreshes the tokens of every installed portal not refreshed for a week, and
/// returns how many were refreshed. Cancellation stops it between portals, never
/// inside a refresh: a refresh cut off after the OAuth server answered would lose
/// the portal. Instances racing here refresh a portal once: the client compares
/// tokens under the portal's refresh lock.
pub async fn renew_stale(state: &AppState, cancel: &CancellationToken) -> usize {
    // `expires_at` is an hour after the last refresh.
    let stale = Utc::now() - STALE_AFTER;
    let portals = match portal::Entity::find()
        .filter(portal::Column::Status.eq(portal::INSTALLED))
        .filter(portal::Column::ExpiresAt.lt(stale))
        .all(&state.db)
        .await
    {
        Ok(portals) => portals,
        Err(err) => {
            tracing::warn!(error = %err, "Не удалось найти порталы для обновления токенов");
            return 0;
        }
    };
    let mut renewed = 0;
    for p in portals {
        if cancel.is_cancelled() {
            break;
        }
        match state.b24.renew(&p.member_id).await {
            Ok(()) => {
                renewed += 1;
                tracing::info!(portal = %p.domain, "Токены портала обновлены заранее: портал неделю не обращался к сервису");
            }
            Err(err) if err.needs_reinstall() => {
                tracing::error!(portal = %p.domain, code = err.code().unwrap_or_default(), "Токены портала больше не действуют: {}", err.admin_message());
            }
            Err(err) => {
                tracing::warn!(portal = %p.domain, error = %err, "Токены портала не обновлены; следующая попытка через 6 часов");
            }
        }
    }
    renewed
}
