//! The outbox worker loop: claim due jobs, run each portal's jobs on a task of its
//! own, record outcomes. A portal whose calls are slow or pushed back holds up only
//! its own queue: the loop keeps claiming for the other portals meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::EntityTrait;
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Job;
use super::backpressure::Probes;
use super::jobs::{self, HEARTBEAT_MS, JobOutcome};
use super::run::{Claimed, Unreachable, run_group};
use crate::bitrix24::Target;
use crate::db::entities::{outbox_job, portal};
use crate::state::{AppState, Nudged};

/// Jobs claimed per round; several batches' worth so one portal's burst coalesces.
const CLAIM_LIMIT: u64 = 200;
/// After a nudge, wait this long for more jobs to arrive before claiming, so a burst
/// of robot runs leaves as a few batches rather than one request each.
const LINGER: Duration = Duration::from_millis(150);
/// Upper bound on sleeping when idle (a job scheduled by another instance).
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Shortest sleep between claims, so due jobs of a portal being run do not spin the loop.
const MIN_POLL: Duration = Duration::from_millis(50);
/// Longest sleep while portals are being run (see `run`).
const BUSY_POLL: Duration = Duration::from_secs(1);
/// On shutdown, jobs in flight get this long to finish before their leases are
/// given up (container runtimes send SIGKILL 10 s after SIGTERM).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A portal's jobs (`None`: the webhook setup's).
type PortalKey = Option<i64>;

/// Forgets a portal's leases if its run panics. Left held, the portal would be
/// skipped by every claim and its leases renewed by the heartbeat until a restart;
/// forgotten, the leases lapse and the jobs run again. A run cancelled on shutdown
/// keeps its entry, so that `release_held` hands its jobs back at once.
struct ForgetOnPanic<'a> {
    held: &'a Mutex<HashMap<PortalKey, Vec<String>>>,
    portal: PortalKey,
}

impl Drop for ForgetOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            lock(self.held).remove(&self.portal);
        }
    }
}

/// What the nudges and the ended runs since the last claim that did not loop asked
/// for: jobs of these portals, or of any.
#[derive(Debug, Default)]
struct Wanted(Nudged);

impl Wanted {
    /// Adds `nudged`, and tells whether a claim may find jobs: of any portal, or of
    /// one wanted and not being run (`running`: its jobs are claimed when its run
    /// ends, which makes it wanted again, see `ended`).
    fn add(&mut self, nudged: Nudged, running: impl Fn(i64) -> bool) -> bool {
        self.0.any |= nudged.any;
        self.0.portals.extend(nudged.portals);
        self.0.any || self.0.portals.iter().any(|id| !running(*id))
    }

    /// A portal whose run ended: its jobs left waiting are wanted.
    fn ended(&mut self, portal: PortalKey) {
        match portal {
            Some(id) => {
                self.0.portals.insert(id);
            }
            None => self.0.any = true,
        }
    }
}

#[derive(Clone)]
pub struct Outbox {
    state: AppState,
    /// Who takes the leases: `host:port` of the serving instance.
    instance: String,
    probes: Arc<Probes>,
    /// Leases of the jobs being run, per portal; the heartbeat renews them, and a
    /// portal listed here is not claimed for again until its task is done.
    held: Arc<Mutex<HashMap<PortalKey, Vec<String>>>>,
}

impl Outbox {
    /// A worker with an identity of its own (tests, benches, one-off runs).
    pub fn new(state: AppState) -> Self {
        let instance = format!("{}:{}", host_name(), crate::db::random_id());
        Self::for_instance(state, instance)
    }

    /// The serving instance's worker; `instance` must be the same after a restart
    /// and differ between instances running at once (`host:port` is both: two live
    /// processes cannot listen on one port of one host).
    pub fn for_instance(state: AppState, instance: String) -> Self {
        Self {
            state,
            instance,
            probes: Arc::new(Probes::default()),
            held: Arc::default(),
        }
    }

    /// Runs until cancelled. On start, takes back what this instance held when it
    /// stopped; on cancellation, lets jobs in flight finish for a moment and gives
    /// the rest of its leases up, so the next instance starts on them at once.
    pub async fn run(self, cancel: CancellationToken) {
        tracing::info!(instance = %self.instance, "Очередь отправки в Битрикс24 запущена");
        self.recover().await;
        let beat = CancellationToken::new();
        let heartbeat = tokio::spawn(self.clone().heartbeat(beat.clone()));
        let mut running: JoinSet<PortalKey> = JoinSet::new();
        let mut claim = true;
        // At start, whatever is due.
        let mut wanted = Wanted(Nudged {
            any: true,
            ..Nudged::default()
        });
        let mut claimed_at = tokio::time::Instant::now();
        loop {
            if cancel.is_cancelled() {
                break;
            }
            if claim {
                claimed_at = tokio::time::Instant::now();
                let started = tokio::select! {
                    n = self.start_due(&mut running) => n,
                    () = cancel.cancelled() => break,
                };
                // A short claim took every due job of the portals not being run, but
                // for those another instance took meanwhile (its jobs wait for the
                // next poll at most). A full one may have left due jobs behind, of a
                // portal nudged, or whose run ended, that is not being run now: only
                // then claim again at once. Otherwise the claim would walk the
                // backlog of the portals it just started, to find nothing (issue 19:
                // 13 such walks a second under load, 10-18 ms each with the write
                // turn held).
                if started as u64 >= CLAIM_LIMIT && self.still_wanted(&mut wanted) {
                    continue;
                }
                wanted = Wanted::default();
            }
            // While portals are being run, their own due jobs would keep the next
            // due time at "now": the claim would scan their backlog every
            // `MIN_POLL` to find nothing. Their runs ending, and nudges for other
            // portals, wake the loop instead; jobs other instances queue or retries
            // of other portals wait at most `BUSY_POLL`.
            // The next due job is counted from now; the busy poll from the last
            // claim, so that wake-ups that claim nothing do not put it off.
            let next_claim = if running.is_empty() {
                let wait = match jobs::next_due_in(&self.state.db, Utc::now()).await {
                    Ok(Some(ms)) => Duration::from_millis(ms as u64).min(IDLE_POLL),
                    _ => IDLE_POLL,
                };
                tokio::time::Instant::now() + wait.max(MIN_POLL)
            } else {
                claimed_at + BUSY_POLL
            };
            claim = tokio::select! {
                // A portal's task ended: its waiting jobs may be claimed again, unless
                // a claim since (after a nudge) took them already; another claim now
                // would only walk that portal's backlog to find nothing (issue 19).
                Some(ended) = running.join_next(), if !running.is_empty() => match ended {
                    Ok(portal) if lock(&self.held).contains_key(&portal) => false,
                    Ok(portal) => {
                        wanted.ended(portal);
                        true
                    }
                    Err(_) => true,
                },
                () = self.state.outbox_notify.notified() => {
                    tokio::time::sleep(LINGER).await;
                    self.still_wanted(&mut wanted)
                }
                () = tokio::time::sleep_until(next_claim) => true,
                () = cancel.cancelled() => break,
            };
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        running.shutdown().await;
        beat.cancel();
        let _ = heartbeat.await;
        self.release_held().await;
        tracing::info!("Очередь отправки остановлена");
    }

    /// Adds the nudges since the last look to `wanted`; whether they may have
    /// queued jobs this worker is not running a portal for already.
    fn still_wanted(&self, wanted: &mut Wanted) -> bool {
        let nudged = self.state.take_nudges();
        let held = lock(&self.held);
        wanted.add(nudged, |id| held.contains_key(&Some(id)))
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
        let Some((groups, count)) = self.claim(now).await else {
            return 0;
        };
        let runs = groups
            .into_iter()
            .map(|(portal_id, claimed)| self.clone().run_portal(portal_id, claimed, now));
        futures::future::join_all(runs).await;
        count
    }

    /// Claims due jobs and starts a task per portal; returns jobs claimed.
    async fn start_due(&self, running: &mut JoinSet<PortalKey>) -> usize {
        let now = Utc::now();
        let Some((groups, count)) = self.claim(now).await else {
            return 0;
        };
        for (portal_id, claimed) in groups {
            running.spawn(self.clone().run_portal(portal_id, claimed, now));
        }
        count
    }

    /// Claims due jobs of portals not being run, grouped per portal; jobs that cannot
    /// be read are recorded dead at once.
    async fn claim(
        &self,
        now: DateTime<Utc>,
    ) -> Option<(BTreeMap<PortalKey, Vec<Claimed>>, usize)> {
        let busy: Vec<PortalKey> = lock(&self.held).keys().copied().collect();
        let through = jobs::Through {
            reader: &self.state.db,
            writer: self.state.write_db(),
            turn: || self.state.write_turn(),
        };
        let claimed = jobs::claim_through(through, now, CLAIM_LIMIT, &self.instance, &busy).await;
        let claimed = match claimed {
            Ok(c) if c.is_empty() => return None,
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "Не удалось взять задания из очереди");
                return None;
            }
        };
        let count = claimed.len();
        let mut groups: BTreeMap<PortalKey, Vec<Claimed>> = BTreeMap::new();
        let mut unreadable = Vec::new();
        for row in claimed {
            match Job::deserialize(&row.payload) {
                Ok(job) => groups
                    .entry(row.portal_id)
                    .or_default()
                    .push(Claimed { row, job }),
                Err(e) => {
                    unreadable.push((row, JobOutcome::Dead(format!("неизвестное задание: {e}"))))
                }
            }
        }
        {
            let mut held = lock(&self.held);
            for (portal_id, claimed) in &groups {
                held.entry(*portal_id)
                    .or_default()
                    .extend(claimed.iter().filter_map(|c| c.row.lease.clone()));
            }
        }
        if !unreadable.is_empty() {
            self.record(unreadable, None, Utc::now()).await;
        }
        Some((groups, count))
    }

    /// Runs one portal's claimed jobs and records their outcomes; a pushback pauses
    /// the portal's whole queue until its next probe.
    async fn run_portal(
        self,
        portal_id: PortalKey,
        claimed: Vec<Claimed>,
        now: DateTime<Utc>,
    ) -> PortalKey {
        let _forget = ForgetOnPanic {
            held: &self.held,
            portal: portal_id,
        };
        let target = target_for(&self.state, portal_id).await;
        let mut finished = run_group(&self.state, target, claimed, now).await;
        let done_at = Utc::now();
        let hint = finished
            .iter()
            .filter_map(|(_, o)| match o {
                JobOutcome::Deferred(at, _) => Some(*at),
                _ => None,
            })
            .max();
        let pause = match hint {
            Some(hint) => {
                let probe = self.probes.next(portal_id, hint, done_at);
                for (_, outcome) in &mut finished {
                    if let JobOutcome::Deferred(at, _) = outcome {
                        *at = probe;
                    }
                }
                tracing::warn!(portal = ?portal_id, probe_at = %probe, "Портал просит подождать: очередь портала приостановлена");
                Some((portal_id, probe))
            }
            None => {
                if finished
                    .iter()
                    .any(|(_, o)| matches!(o, JobOutcome::Done(_)))
                {
                    self.probes.clear(portal_id);
                }
                None
            }
        };
        log_round(portal_id, &finished);
        self.record(finished, pause, done_at).await;
        lock(&self.held).remove(&portal_id);
        portal_id
    }

    /// A portal's round recorded in the next group commit, with robot calls' writes:
    /// a transaction of its own took the write turn from them at every round, and
    /// kept them waiting 2–5 ms under load (issue 19). If it fails, the leases lapse
    /// and the jobs run again; every job is safe to repeat.
    async fn record(
        &self,
        finished: Vec<(outbox_job::Model, JobOutcome)>,
        pause: Option<(PortalKey, DateTime<Utc>)>,
        at: DateTime<Utc>,
    ) {
        let round = Arc::new(Round::new(finished, pause));
        let written = self
            .state
            .group_write(move |txn| {
                let round = Arc::clone(&round);
                Box::pin(async move { round.write(txn, at).await })
            })
            .await;
        if let Err(e) = written {
            tracing::error!(error = %e, "Не удалось записать результаты заданий");
        }
    }

    /// Keeps the leases of running jobs alive, so only a dead or hung worker's lapse.
    async fn heartbeat(self, stop: CancellationToken) {
        let every = Duration::from_millis(HEARTBEAT_MS as u64);
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.cancelled() => return,
            }
            let leases: Vec<String> = lock(&self.held).values().flatten().cloned().collect();
            if leases.is_empty() {
                continue;
            }
            // Through the writer: a write from a reading connection would empty the
            // writer's page cache (`db::connect_writer`).
            let renewed = {
                let _turn = self.state.write_turn().await;
                jobs::renew(self.state.write_db(), &leases, Utc::now()).await
            };
            if let Err(e) = renewed {
                tracing::warn!(error = %e, "Не удалось продлить аренду заданий");
            }
        }
    }

    /// A restarted instance's old leases are dead: it died holding them. On SQLite
    /// this process is the only user of the database, so every lease is its own.
    async fn recover(&self) {
        let shared = self.state.db.get_database_backend() != sea_orm::DatabaseBackend::Sqlite;
        let owner = shared.then_some(self.instance.as_str());
        let recovered = {
            let _turn = self.state.write_turn().await;
            jobs::recover(self.state.write_db(), owner, Utc::now()).await
        };
        match recovered {
            Ok((0, 0)) => {}
            Ok((taken, probed)) => tracing::info!(
                taken,
                probed,
                "Задания прежнего запуска возвращены в очередь"
            ),
            Err(e) => tracing::warn!(error = %e, "Не удалось вернуть задания прежнего запуска"),
        }
    }

    async fn release_held(&self) {
        let leases: Vec<String> = lock(&self.held).drain().flat_map(|(_, l)| l).collect();
        if leases.is_empty() {
            return;
        }
        let released = {
            let _turn = self.state.write_turn().await;
            jobs::release(self.state.write_db(), &leases).await
        };
        match released {
            Ok(n) => tracing::info!(jobs = n, "Аренда незавершённых заданий снята"),
            Err(e) => tracing::warn!(error = %e, "Не удалось снять аренду заданий"),
        }
    }
}

/// A portal's finished round, as it is written: done jobs, the usual outcome, in a
/// statement per claim rather than one each (issue 19).
struct Round {
    done: BTreeMap<String, Vec<(i64, serde_json::Value)>>,
    other: Vec<(outbox_job::Model, JobOutcome)>,
    pause: Option<(PortalKey, DateTime<Utc>)>,
}

impl Round {
    fn new(
        finished: Vec<(outbox_job::Model, JobOutcome)>,
        pause: Option<(PortalKey, DateTime<Utc>)>,
    ) -> Self {
        let mut done: BTreeMap<String, Vec<(i64, serde_json::Value)>> = BTreeMap::new();
        let mut other = Vec::new();
        for (row, outcome) in finished {
            match (outcome, &row.lease) {
                (JobOutcome::Done(result), Some(lease)) => {
                    done.entry(lease.clone())
                        .or_default()
                        .push((row.id, result));
                }
                (outcome, _) => other.push((row, outcome)),
            }
        }
        Round { done, other, pause }
    }

    /// Safe to run again after a rollback, as a group commit may.
    async fn write(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        at: DateTime<Utc>,
    ) -> Result<(), sea_orm::DbErr> {
        for (row, outcome) in &self.other {
            jobs::finish(txn, row, outcome.clone(), at).await?;
        }
        for (lease, done) in &self.done {
            crate::db::prepared::finish_done_jobs(txn, Some(lease), done, at).await?;
        }
        if let Some((portal_id, until)) = self.pause {
            jobs::pause_portal(txn, portal_id, until, at).await?;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The machine's name, for lease owners; the kernel's, else the shell's, else none.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A line per job that needs a look, one per round for the jobs done: a robot run
/// makes three jobs, and a line each made three of a run's five log lines (logging
/// was ~8 % of a robot call's instructions in issue 19's profile).
fn log_round(portal_id: PortalKey, finished: &[(outbox_job::Model, JobOutcome)]) {
    let mut done: BTreeMap<&str, usize> = BTreeMap::new();
    for (row, outcome) in finished {
        match outcome {
            JobOutcome::Done(_) => *done.entry(row.kind.as_str()).or_default() += 1,
            _ => log_outcome(row, outcome),
        }
    }
    if !done.is_empty() {
        let kinds = done
            .iter()
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(portal = ?portal_id, done = done.values().sum::<usize>(), kinds, "Задания выполнены");
    }
}

fn log_outcome(row: &outbox_job::Model, outcome: &JobOutcome) {
    match outcome {
        // Counted in `log_round`'s line.
        JobOutcome::Done(_) => {}
        JobOutcome::RetryAt(at, error) => tracing::warn!(
            job = row.id,
            kind = %row.kind,
            attempt = row.attempts,
            retry_at = %at,
            error = %error,
            "Задание будет повторено"
        ),
        JobOutcome::Waiting(at) => tracing::debug!(
            job = row.id,
            kind = %row.kind,
            until = %at,
            "Задание ждёт"
        ),
        JobOutcome::Deferred(at, error) => tracing::info!(
            job = row.id,
            kind = %row.kind,
            probe_at = %at,
            error = %error,
            "Задание ждёт, пока портал примет запросы"
        ),
        JobOutcome::Dead(error) => tracing::error!(
            job = row.id,
            kind = %row.kind,
            attempt = row.attempts,
            error = %error,
            "Задание не выполнено, нужна помощь администратора"
        ),
        JobOutcome::Lost => tracing::warn!(
            job = row.id,
            kind = %row.kind,
            "Задание перешло к другому обработчику: результат не записан"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn nudged(any: bool, portals: &[i64]) -> Nudged {
        Nudged {
            any,
            portals: portals.iter().copied().collect(),
        }
    }

    #[test]
    fn a_run_that_panics_leaves_its_portal_claimable_and_a_cancelled_one_held() {
        let held: Mutex<HashMap<PortalKey, Vec<String>>> = Mutex::new(HashMap::from([
            (Some(1), vec!["lease-1".to_owned()]),
            (Some(2), vec!["lease-2".to_owned()]),
        ]));
        let panicked = std::panic::catch_unwind(|| {
            let _forget = ForgetOnPanic {
                held: &held,
                portal: Some(1),
            };
            panic!("a job's code panicked");
        });
        assert!(panicked.is_err());
        // Dropped without a panic, as a run cancelled on shutdown is.
        drop(ForgetOnPanic {
            held: &held,
            portal: Some(2),
        });
        let held = lock(&held);
        assert!(!held.contains_key(&Some(1)), "{held:?}");
        assert!(held.contains_key(&Some(2)), "{held:?}");
    }

    #[test]
    fn only_a_nudged_portal_not_being_run_is_worth_another_claim() {
        let running = |id: i64| id == 1;
        // A burst of portal 1 while it is being run: its own claim picks it up later.
        let mut wanted = Wanted::default();
        assert!(!wanted.add(nudged(false, &[1]), running));
        assert!(!wanted.add(nudged(false, &[]), running));
        // Portal 2 nudged before a full claim that started only portal 1: still
        // wanted after it, with nothing new nudged.
        assert!(wanted.add(nudged(false, &[1, 2]), running));
        assert!(wanted.add(nudged(false, &[]), running));
        // Once portal 2 is being run as well, nothing is; when portal 1's run has
        // ended, its burst is wanted again.
        assert!(!wanted.add(nudged(false, &[]), |id| id <= 2));
        assert!(wanted.add(nudged(false, &[]), |id| id == 2));
        // A portal whose run ended is wanted (a full claim may have left its jobs).
        let mut after_run = Wanted::default();
        after_run.ended(Some(3));
        assert!(after_run.add(nudged(false, &[]), running));
        assert!(!after_run.add(nudged(false, &[]), |id| id == 3));
        // A nudge naming no portal wants a claim whatever is being run.
        assert!(wanted.add(nudged(true, &[1]), running));
        assert!(wanted.add(nudged(false, &[]), |_| true));
    }
}
