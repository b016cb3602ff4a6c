//! The outbox worker loop: claim due jobs, run them per portal, record outcomes.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use sea_orm::EntityTrait;
use tokio_util::sync::CancellationToken;

use super::Job;
use super::jobs::{self, Outcome};
use super::run::{Claimed, Unreachable, run_group};
use crate::bitrix24::Target;
use crate::db::entities::portal;
use crate::state::AppState;

/// Jobs claimed per round; several batches' worth so one portal's burst coalesces.
const CLAIM_LIMIT: u64 = 200;
/// After a nudge, wait this long for more jobs to arrive before claiming, so a burst
/// of robot runs leaves as a few batches rather than one request each.
const LINGER: Duration = Duration::from_millis(150);
/// Upper bound on sleeping when idle (a job scheduled by another instance).
const IDLE_POLL: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Outbox {
    state: AppState,
}

impl Outbox {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// Runs until cancelled. A job cut off by cancellation keeps its lease and runs
    /// again after the lease expires (here or in another instance).
    pub async fn run(self, cancel: CancellationToken) {
        tracing::info!("Очередь отправки в Битрикс24 запущена");
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let handled = tokio::select! {
                n = self.run_once() => n,
                () = cancel.cancelled() => break,
            };
            if handled > 0 {
                continue;
            }
            let wait = match jobs::next_due_in(&self.state.db, Utc::now()).await {
                Ok(Some(ms)) => Duration::from_millis(ms as u64).min(IDLE_POLL),
                _ => IDLE_POLL,
            };
            tokio::select! {
                () = self.state.outbox_notify.notified() => {
                    tokio::time::sleep(LINGER).await;
                }
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => break,
            }
        }
        tracing::info!("Очередь отправки остановлена");
    }

    /// Runs due jobs until none is due now (retries scheduled later are left).
    /// Tests drive the worker with this instead of sleeping.
    pub async fn run_until_idle(&self) {
        for _ in 0..1000 {
            if self.run_once().await == 0 {
                return;
            }
        }
    }

    /// One round: claim, run per target concurrently, record. Returns jobs handled.
    pub async fn run_once(&self) -> usize {
        let now = Utc::now();
        let claimed = {
            let _turn = self.state.write_turn().await;
            jobs::claim(&self.state.db, now, CLAIM_LIMIT).await
        };
        let claimed = match claimed {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "Не удалось взять задания из очереди");
                return 0;
            }
        };
        let count = claimed.len();
        if count == 0 {
            return 0;
        }
        let mut groups: BTreeMap<Option<i64>, Vec<Claimed>> = BTreeMap::new();
        let mut finished = Vec::new();
        for row in claimed {
            match serde_json::from_value::<Job>(row.payload.clone()) {
                Ok(job) => groups
                    .entry(row.portal_id)
                    .or_default()
                    .push(Claimed { row, job }),
                Err(e) => finished.push((row, Outcome::Dead(format!("неизвестное задание: {e}")))),
            }
        }
        let runs = groups.into_iter().map(|(portal_id, claimed)| {
            let state = self.state.clone();
            async move {
                let target = target_for(&state, portal_id).await;
                run_group(&state, target, claimed, now).await
            }
        });
        for group in futures::future::join_all(runs).await {
            finished.extend(group);
        }
        let done_at = Utc::now();
        for (row, outcome) in &finished {
            log_outcome(row, outcome);
        }
        // One transaction for the round: one commit instead of one per job. If it
        // fails, the leases expire and the jobs run again; every job is safe to repeat.
        if let Err(e) = self.record(finished, done_at).await {
            tracing::error!(error = %e, "Не удалось записать результаты заданий");
        }
        count
    }
}

impl Outbox {
    async fn record(
        &self,
        finished: Vec<(crate::db::entities::outbox_job::Model, Outcome)>,
        at: chrono::DateTime<Utc>,
    ) -> Result<(), sea_orm::DbErr> {
        let (_turn, txn) = self.state.begin_write().await?;
        for (row, outcome) in finished {
            jobs::finish(&txn, &row, outcome, at).await?;
        }
        txn.commit().await
    }
}

fn log_outcome(row: &crate::db::entities::outbox_job::Model, outcome: &Outcome) {
    match outcome {
        Outcome::Done(_) => {
            tracing::info!(job = row.id, kind = %row.kind, attempt = row.attempts, "Задание выполнено")
        }
        Outcome::RetryAt(at, error) => tracing::warn!(
            job = row.id,
            kind = %row.kind,
            attempt = row.attempts,
            retry_at = %at,
            error = %error,
            "Задание будет повторено"
        ),
        Outcome::Dead(error) => tracing::error!(
            job = row.id,
            kind = %row.kind,
            attempt = row.attempts,
            error = %error,
            "Задание не выполнено, нужна помощь администратора"
        ),
    }
}

/// Where a group's calls go: the installed portal, or the configured inbound webhook.
async fn target_for(state: &AppState, portal_id: Option<i64>) -> Result<Target, Unreachable> {
    match portal_id {
        Some(id) => match portal::Entity::find_by_id(id).one(&state.db).await {
            Ok(Some(p)) if p.status == portal::INSTALLED => Ok(Target::Portal {
                member_id: p.member_id,
            }),
            Ok(Some(_)) => Err(Unreachable::Gone("приложение удалено с портала".into())),
            Ok(None) => Err(Unreachable::Gone("портал не найден".into())),
            // A database hiccup says nothing about the portal: try again later.
            Err(e) => Err(Unreachable::Transient(format!("база данных: {e}"))),
        },
        None => state
            .config
            .webhook_url
            .clone()
            .map(Target::Webhook)
            .ok_or_else(|| {
                Unreachable::Gone(
                    "BITRIX24_WEBHOOK_URL не задан: некуда отправить результат".into(),
                )
            }),
    }
}
