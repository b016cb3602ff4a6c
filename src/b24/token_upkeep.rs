//! Keeps idle portals installed. A refresh token lives 180 days and only a refresh
//! replaces it (protocol §2.1); a clinic that pauses its questionnaires for half a
//! year must not come back to a dead installation. Portals whose tokens have not
//! been refreshed for a month are refreshed here, on a timer.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tokio_util::sync::CancellationToken;

use crate::db::entities::portal;
use crate::state::AppState;

/// Far inside the refresh token's 180 days, so a few failed rounds change nothing.
const STALE_AFTER: TimeDelta = TimeDelta::days(30);
const EVERY: Duration = Duration::from_secs(6 * 3600);

/// Runs [`renew_stale`] now and every six hours until cancelled.
pub async fn run(state: AppState, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = renew_stale(&state) => {}
            () = cancel.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Refreshes the tokens of every installed portal not refreshed for a month.
/// Returns how many were refreshed. Instances racing here refresh a portal once:
/// the client compares tokens under the portal's refresh lock.
pub async fn renew_stale(state: &AppState) -> usize {
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
        match state.b24.renew(&p.member_id).await {
            Ok(()) => {
                renewed += 1;
                tracing::info!(portal = %p.domain, "Токены портала обновлены заранее: портал давно не обращался к сервису");
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
