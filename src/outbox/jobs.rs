//! Storage side of the outbox: claiming due jobs under a lease and recording outcomes.
//! Portable between SQLite and PostgreSQL: a claim is one conditional UPDATE that
//! stamps a random lease, and the claimer reads back the rows carrying its lease, so
//! two workers can never both own a row.
//!
//! Leases are short and renewed: a running worker extends its leases every
//! [`HEARTBEAT_MS`], so a lease that stops being renewed (its process died or hung)
//! lapses within [`LEASE_MS`] and any worker may take the job. Every write of a
//! job's outcome is fenced on the lease, so a worker that lost its lease cannot
//! record over the new owner.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
    sea_query::{Expr, ExprTrait, Func},
};

use crate::db::entities::outbox_job;

/// How long a claimed job is ours without a renewal. Short, so a dead worker's jobs
/// are taken over within seconds (another instance delivers them within 15 s of the
/// portal being able to take them); three heartbeats fit into it, so one slow
/// database round does not lose a lease.
pub const LEASE_MS: i64 = 10_000;
/// How often a worker renews the leases of the jobs it is running.
pub const HEARTBEAT_MS: i64 = 3_000;
/// After this many attempts a job is dead and waits for an admin.
pub const MAX_ATTEMPTS: i32 = 10;

/// [`due`] for rows already named by their keys, written so that no index on
/// `done_at` serves it: SQLite's planner, without statistics, took
/// `idx_outbox_due` over the keys and walked every open job to claim 200 of them
/// (issue 19).
fn still_due(now_ms: i64) -> Condition {
    Condition::all()
        .add(still_open())
        .add(outbox_job::Column::RunAt.lte(now_ms))
        .add(
            Condition::any()
                .add(outbox_job::Column::LockedUntil.is_null())
                .add(outbox_job::Column::LockedUntil.lt(now_ms)),
        )
}

/// Neither done nor dead, in the form no index serves (see [`still_due`]).
fn still_open() -> sea_orm::sea_query::SimpleExpr {
    Func::coalesce([
        Expr::col(outbox_job::Column::DoneAt),
        Expr::col(outbox_job::Column::DeadAt),
    ])
    .is_null()
}

fn due(now_ms: i64) -> Condition {
    Condition::all()
        .add(outbox_job::Column::DoneAt.is_null())
        .add(outbox_job::Column::DeadAt.is_null())
        .add(outbox_job::Column::RunAt.lte(now_ms))
        .add(
            Condition::any()
                .add(outbox_job::Column::LockedUntil.is_null())
                .add(outbox_job::Column::LockedUntil.lt(now_ms)),
        )
}

/// Jobs of these portals are left alone (`None`: the webhook setup's jobs).
fn not_of(portals: &[Option<i64>]) -> Condition {
    let ids: Vec<i64> = portals.iter().flatten().copied().collect();
    let mut c = Condition::all();
    if !ids.is_empty() {
        c = c.add(
            Condition::any()
                .add(outbox_job::Column::PortalId.is_null())
                .add(outbox_job::Column::PortalId.is_not_in(ids)),
        );
    }
    if portals.contains(&None) {
        c = c.add(outbox_job::Column::PortalId.is_not_null());
    }
    c
}

/// Claims up to `limit` due jobs, oldest first, for the instance `owner`, leaving out
/// the portals in `busy` (this worker is already running their jobs).
pub async fn claim<C: ConnectionTrait>(
    db: &C,
    now: DateTime<Utc>,
    limit: u64,
    owner: &str,
    busy: &[Option<i64>],
) -> Result<Vec<outbox_job::Model>, DbErr> {
    let through = Through {
        reader: db,
        writer: db,
        turn: || async {},
    };
    claim_through(through, now, limit, owner, busy).await
}

/// Where a claim reads and writes: `turn` is taken for the write alone.
pub struct Through<'c, R, W, T> {
    pub reader: &'c R,
    pub writer: &'c W,
    pub turn: T,
}

/// [`claim`] reading through one connection and writing the lease through another
/// once `turn` is held. SQLite's worker reads from the pool and holds the write turn
/// for the one UPDATE: holding it for all three statements kept robot calls' group
/// commits waiting 3–8 ms at every claim under load (issue 19). The UPDATE checks
/// again that each row is due, so a row read as due and taken meanwhile is not
/// taken twice, and the rows are read back by the lease after its commit.
pub async fn claim_through<R, W, T, F, G>(
    through: Through<'_, R, W, T>,
    now: DateTime<Utc>,
    limit: u64,
    owner: &str,
    busy: &[Option<i64>],
) -> Result<Vec<outbox_job::Model>, DbErr>
where
    R: ConnectionTrait,
    W: ConnectionTrait,
    T: FnOnce() -> F,
    F: std::future::Future<Output = G>,
{
    let now_ms = now.timestamp_millis();
    let ids: Vec<i64> = due_ids(now_ms, limit, busy)
        .into_tuple()
        .all(through.reader)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let lease = crate::db::random_id();
    {
        let _turn = (through.turn)().await;
        take(&ids, &lease, owner, now_ms)
            .exec(through.writer)
            .await?;
    }
    taken(ids, lease).all(through.reader).await
}

/// The claim's first step: the oldest due jobs, leaving out `busy` portals.
fn due_ids(now_ms: i64, limit: u64, busy: &[Option<i64>]) -> sea_orm::Select<outbox_job::Entity> {
    outbox_job::Entity::find()
        .select_only()
        .column(outbox_job::Column::Id)
        .filter(due(now_ms))
        .filter(not_of(busy))
        .order_by_asc(outbox_job::Column::RunAt)
        .order_by_asc(outbox_job::Column::Id)
        .limit(limit)
}

/// The claim's second step: `lease` on those of `ids` still due. The due condition
/// is repeated: between the SELECT and here another worker may have claimed some of
/// these rows, and only this check is atomic.
fn take(
    ids: &[i64],
    lease: &str,
    owner: &str,
    now_ms: i64,
) -> sea_orm::UpdateMany<outbox_job::Entity> {
    outbox_job::Entity::update_many()
        .col_expr(outbox_job::Column::Lease, Expr::value(lease))
        .col_expr(outbox_job::Column::LeaseOwner, Expr::value(owner))
        .col_expr(
            outbox_job::Column::LockedUntil,
            Expr::value(now_ms + LEASE_MS),
        )
        .col_expr(
            outbox_job::Column::Attempts,
            Expr::col(outbox_job::Column::Attempts).add(1),
        )
        .filter(outbox_job::Column::Id.is_in(ids.iter().copied()))
        .filter(still_due(now_ms))
}

/// The claim's last step: the rows taken, read back by key. The lease alone is not
/// indexed, and a search by it walked every open job, a burst's whole backlog at
/// every claim (issue 19).
fn taken(ids: Vec<i64>, lease: String) -> sea_orm::Select<outbox_job::Entity> {
    outbox_job::Entity::find()
        .filter(outbox_job::Column::Id.is_in(ids))
        .filter(outbox_job::Column::Lease.eq(lease))
        .filter(still_open())
        .order_by_asc(outbox_job::Column::Id)
}

/// Milliseconds until the next job is due, if any is waiting: a free job at its
/// `run_at`, a leased one when its lease lapses (unless renewed meanwhile).
pub async fn next_due_in<C: ConnectionTrait>(
    db: &C,
    now: DateTime<Utc>,
) -> Result<Option<i64>, DbErr> {
    let now_ms = now.timestamp_millis();
    let pending = || {
        outbox_job::Entity::find()
            .select_only()
            .filter(outbox_job::Column::DoneAt.is_null())
            .filter(outbox_job::Column::DeadAt.is_null())
    };
    let free: Option<i64> = pending()
        .column_as(outbox_job::Column::RunAt.min(), "next")
        .filter(
            Condition::any()
                .add(outbox_job::Column::LockedUntil.is_null())
                .add(outbox_job::Column::LockedUntil.lt(now_ms)),
        )
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten();
    let leased: Option<i64> = pending()
        .column_as(outbox_job::Column::LockedUntil.min(), "next")
        .filter(outbox_job::Column::LockedUntil.gte(now_ms))
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten();
    let next = match (free, leased) {
        (Some(a), Some(b)) => Some(Ord::min(a, b + 1)),
        (a, b) => a.or(b.map(|b| b + 1)),
    };
    Ok(next.map(|at| Ord::max(at - now_ms, 0)))
}

/// Extends the leases this worker holds; returns how many jobs are still ours.
pub async fn renew<C: ConnectionTrait>(
    db: &C,
    leases: &[String],
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    if leases.is_empty() {
        return Ok(0);
    }
    outbox_job::Entity::update_many()
        .col_expr(
            outbox_job::Column::LockedUntil,
            Expr::value(now.timestamp_millis() + LEASE_MS),
        )
        .filter(outbox_job::Column::Lease.is_in(leases.iter().cloned()))
        .filter(outbox_job::Column::DoneAt.is_null())
        .filter(outbox_job::Column::DeadAt.is_null())
        .exec(db)
        .await
        .map(|r| r.rows_affected)
}

/// Whether `job`'s lease is still ours: checked right before a side effect that
/// cannot be told apart from a repeat by the portal itself.
pub async fn holds<C: ConnectionTrait>(db: &C, job: &outbox_job::Model) -> Result<bool, DbErr> {
    let Some(lease) = &job.lease else {
        return Ok(false);
    };
    let found = outbox_job::Entity::find()
        .select_only()
        .column(outbox_job::Column::Id)
        .filter(outbox_job::Column::Id.eq(job.id))
        .filter(outbox_job::Column::Lease.eq(lease.clone()))
        .filter(outbox_job::Column::DoneAt.is_null())
        .filter(outbox_job::Column::DeadAt.is_null())
        .into_tuple::<i64>()
        .one(db)
        .await?;
    Ok(found.is_some())
}

/// Gives leases up (shutdown): the jobs are due again at once for any worker.
pub async fn release<C: ConnectionTrait>(db: &C, leases: &[String]) -> Result<u64, DbErr> {
    if leases.is_empty() {
        return Ok(0);
    }
    unlock()
        .filter(outbox_job::Column::Lease.is_in(leases.iter().cloned()))
        .filter(outbox_job::Column::DoneAt.is_null())
        .exec(db)
        .await
        .map(|r| r.rows_affected)
}

/// Clears a job's lease: the start of every write that ends or gives up a claim.
fn unlock() -> sea_orm::UpdateMany<outbox_job::Entity> {
    outbox_job::Entity::update_many()
        .col_expr(
            outbox_job::Column::LockedUntil,
            Expr::value(Option::<i64>::None),
        )
        .col_expr(
            outbox_job::Column::Lease,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            outbox_job::Column::LeaseOwner,
            Expr::value(Option::<String>::None),
        )
}

/// What a starting instance finds of its own previous life: leases it held when it
/// died (`owner`; `None`: every lease, for a database only this process uses) and
/// jobs paused by a portal's backpressure. Both are due at once: the old leases are
/// dead by definition, and a restart is a good moment for one probe.
pub async fn recover<C: ConnectionTrait>(
    db: &C,
    owner: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(u64, u64), DbErr> {
    let mut taken = unlock()
        .filter(outbox_job::Column::DoneAt.is_null())
        .filter(outbox_job::Column::LockedUntil.is_not_null());
    if let Some(owner) = owner {
        taken = taken.filter(outbox_job::Column::LeaseOwner.eq(owner));
    }
    let taken = taken.exec(db).await?.rows_affected;
    let probed = outbox_job::Entity::update_many()
        .col_expr(
            outbox_job::Column::RunAt,
            Expr::value(now.timestamp_millis()),
        )
        .col_expr(outbox_job::Column::Paused, Expr::value(false))
        .filter(outbox_job::Column::DoneAt.is_null())
        .filter(outbox_job::Column::DeadAt.is_null())
        .filter(outbox_job::Column::Paused.eq(true))
        .filter(outbox_job::Column::RunAt.gt(now.timestamp_millis()))
        .exec(db)
        .await?
        .rows_affected;
    Ok((taken, probed))
}

/// «Повторить сейчас»: the portal's waiting jobs are due now. Jobs being run (leased)
/// are left to their worker.
pub async fn retry_now<C: ConnectionTrait>(
    db: &C,
    portal_id: Option<i64>,
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    let now_ms = now.timestamp_millis();
    let q = reschedule_waiting(portal_id, now_ms, now_ms, false)
        .filter(outbox_job::Column::RunAt.gt(now_ms));
    Ok(q.exec(db).await?.rows_affected)
}

/// Holds back a portal's other waiting jobs until `until` (its queue is paused by
/// backpressure), so no worker of any instance hammers a portal that pushes back.
pub async fn pause_portal<C: ConnectionTrait>(
    db: &C,
    portal_id: Option<i64>,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    let until_ms = until.timestamp_millis();
    let q = reschedule_waiting(portal_id, now.timestamp_millis(), until_ms, true)
        .filter(outbox_job::Column::RunAt.lt(until_ms));
    Ok(q.exec(db).await?.rows_affected)
}

/// Moves the portal's waiting jobs (pending, not held by a live lease) to `run_at`,
/// marked as paused by a pushback or not.
fn reschedule_waiting(
    portal_id: Option<i64>,
    now_ms: i64,
    run_at: i64,
    paused: bool,
) -> sea_orm::UpdateMany<outbox_job::Entity> {
    let q = outbox_job::Entity::update_many()
        .col_expr(outbox_job::Column::RunAt, Expr::value(run_at))
        .col_expr(outbox_job::Column::Paused, Expr::value(paused))
        .filter(outbox_job::Column::DoneAt.is_null())
        .filter(outbox_job::Column::DeadAt.is_null())
        .filter(
            Condition::any()
                .add(outbox_job::Column::LockedUntil.is_null())
                .add(outbox_job::Column::LockedUntil.lt(now_ms)),
        );
    match portal_id {
        Some(p) => q.filter(outbox_job::Column::PortalId.eq(p)),
        None => q.filter(outbox_job::Column::PortalId.is_null()),
    }
}

/// What happened to one job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Done(serde_json::Value),
    RetryAt(DateTime<Utc>, String),
    /// The portal pushed back (see `B24Error::is_backpressure`): try again at this
    /// time; it does not count toward dead.
    Deferred(DateTime<Utc>, String),
    Dead(String),
    /// Nothing to do yet (a wait for the patient): due again at this time unless
    /// something made it due earlier meanwhile; no attempt or error is counted.
    Waiting(DateTime<Utc>),
    /// The lease was taken by another worker before the side effect: the new owner
    /// runs the job, nothing is recorded here.
    Lost,
}

/// Records an outcome, but only while the lease is still ours: a worker that lost its
/// lease (it was too slow) must not overwrite the new owner's result.
pub async fn finish<C: ConnectionTrait>(
    db: &C,
    job: &outbox_job::Model,
    outcome: JobOutcome,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let paused = |update: sea_orm::UpdateMany<outbox_job::Entity>, paused: bool| {
        update.col_expr(outbox_job::Column::Paused, Expr::value(paused))
    };
    let update = match outcome {
        JobOutcome::Lost => return Ok(()),
        // The one way a job is recorded done, alone or with its round.
        JobOutcome::Done(result) => {
            let done = [(job.id, result)];
            return crate::db::prepared::finish_done_jobs(db, job.lease.as_deref(), &done, now)
                .await;
        }
        JobOutcome::RetryAt(at, error) => paused(unlock(), false)
            .col_expr(
                outbox_job::Column::RunAt,
                Expr::value(at.timestamp_millis()),
            )
            .col_expr(outbox_job::Column::LastError, Expr::value(error)),
        JobOutcome::Deferred(at, error) => paused(unlock(), true)
            .col_expr(
                outbox_job::Column::RunAt,
                Expr::value(at.timestamp_millis()),
            )
            .col_expr(outbox_job::Column::LastError, Expr::value(error))
            .col_expr(
                outbox_job::Column::Deferrals,
                Expr::col(outbox_job::Column::Deferrals).add(1),
            ),
        JobOutcome::Dead(error) => paused(unlock(), false)
            .col_expr(outbox_job::Column::DeadAt, Expr::value(now))
            .col_expr(outbox_job::Column::LastError, Expr::value(error)),
        // A wake-up written while the job ran (it moved `run_at`) is kept.
        JobOutcome::Waiting(at) => paused(unlock(), false)
            .col_expr(
                outbox_job::Column::RunAt,
                Expr::case(
                    Expr::col(outbox_job::Column::RunAt).eq(job.run_at),
                    Expr::value(at.timestamp_millis()),
                )
                .finally(Expr::col(outbox_job::Column::RunAt))
                .into(),
            )
            .col_expr(outbox_job::Column::Attempts, Expr::value(0))
            .col_expr(
                outbox_job::Column::LastError,
                Expr::value(Option::<String>::None),
            ),
    };
    update
        .filter(outbox_job::Column::Id.eq(job.id))
        .filter(outbox_job::Column::Lease.eq(job.lease.clone()))
        .exec(db)
        .await
        .map(|_| ())
}

/// Puts a dead job back in the queue (admin's «Повторить»).
pub async fn revive<C: ConnectionTrait>(
    db: &C,
    id: i64,
    portal_id: Option<i64>,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let mut q = outbox_job::Entity::update_many()
        .col_expr(
            outbox_job::Column::DeadAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(outbox_job::Column::Attempts, Expr::value(0))
        .col_expr(outbox_job::Column::Deferrals, Expr::value(0))
        .col_expr(
            outbox_job::Column::RunAt,
            Expr::value(now.timestamp_millis()),
        )
        .filter(outbox_job::Column::Id.eq(id))
        .filter(outbox_job::Column::DeadAt.is_not_null());
    q = match portal_id {
        Some(p) => q.filter(outbox_job::Column::PortalId.eq(p)),
        None => q.filter(outbox_job::Column::PortalId.is_null()),
    };
    Ok(q.exec(db).await?.rows_affected == 1)
}

/// A portal's jobs not done yet (pending and dead); `None`: the webhook setup's.
fn open_of(portal_id: Option<i64>) -> sea_orm::Select<outbox_job::Entity> {
    let q = outbox_job::Entity::find().filter(outbox_job::Column::DoneAt.is_null());
    match portal_id {
        Some(p) => q.filter(outbox_job::Column::PortalId.eq(p)),
        None => q.filter(outbox_job::Column::PortalId.is_null()),
    }
}

/// Newest first, for the admin page.
fn newest_open(portal_id: Option<i64>, limit: u64) -> sea_orm::Select<outbox_job::Entity> {
    open_of(portal_id)
        .order_by_desc(outbox_job::Column::Id)
        .limit(limit)
}

/// Jobs not done yet (pending and dead), newest first, for the admin page.
pub async fn open_jobs<C: ConnectionTrait>(
    db: &C,
    portal_id: Option<i64>,
    limit: u64,
) -> Result<Vec<outbox_job::Model>, DbErr> {
    newest_open(portal_id, limit).all(db).await
}

/// Failed tries of a job: its attempts less those a portal's backpressure deferred.
pub fn failures(job: &outbox_job::Model) -> i32 {
    Ord::max(job.attempts.saturating_sub(job.deferrals), 0)
}

/// A portal's queue at a glance, for the admin page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueSummary {
    /// Waiting, never failed.
    pub queued: u64,
    /// Waiting after a failure or a portal's pushback.
    pub retrying: u64,
    pub dead: u64,
    /// Unix milliseconds of the earliest waiting job.
    pub next_at: Option<i64>,
    /// The latest error of a waiting or dead job (Russian, for the administrator).
    pub last_error: Option<String>,
}

/// Dead at, last error, run at, kind: what the summary reads of an open job.
type OpenRow = (Option<DateTime<Utc>>, Option<String>, i64, String);

pub async fn summary<C: ConnectionTrait>(
    db: &C,
    portal_id: Option<i64>,
) -> Result<QueueSummary, DbErr> {
    let open = || open_of(portal_id);
    // (dead, failed before, run_at, error, kind) of every open job, light columns only.
    let rows: Vec<OpenRow> = open()
        .select_only()
        .column(outbox_job::Column::DeadAt)
        .column(outbox_job::Column::LastError)
        .column(outbox_job::Column::RunAt)
        .column(outbox_job::Column::Kind)
        .order_by_asc(outbox_job::Column::Id)
        .into_tuple()
        .all(db)
        .await?;
    let mut s = QueueSummary::default();
    for (dead_at, error, run_at, kind) in rows {
        // A robot waiting for its patient is no delivery in arrears.
        if kind == super::survey_wait::KIND && dead_at.is_none() && error.is_none() {
            continue;
        }
        if dead_at.is_some() {
            s.dead += 1;
        } else {
            if error.is_some() {
                s.retrying += 1;
            } else {
                s.queued += 1;
            }
            s.next_at = Some(s.next_at.map_or(run_at, |n| Ord::min(n, run_at)));
        }
        if error.is_some() {
            s.last_error = error;
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, QueryTrait};

    use super::*;
    use crate::db::query_plan as plan;

    /// Issue 19: the claim walked every open job through `idx_outbox_due`, reading
    /// each skipped row, and took and read back its own rows the same way. Plans are
    /// fixed for a schema, so this guards the figures without timing anything.
    #[tokio::test]
    async fn a_claim_walks_the_open_jobs_index_and_takes_its_rows_by_key() {
        let db = crate::db::connect("sqlite::memory:").await.expect("db");
        crate::db::migrate(&db).await.expect("migrated");
        let busy = [Some(1), None];
        let walk = plan(&db, due_ids(0, 200, &busy).build(DbBackend::Sqlite)).await;
        assert_eq!(
            walk,
            "SEARCH outbox_job USING INDEX idx_outbox_claim (run_at<?)"
        );
        let ids = [3, 5, 8];
        let take = plan(&db, take(&ids, "l", "o", 0).build(DbBackend::Sqlite)).await;
        assert_eq!(
            take,
            "SEARCH outbox_job USING INTEGER PRIMARY KEY (rowid=?)"
        );
        let read = plan(
            &db,
            taken(ids.to_vec(), "l".into()).build(DbBackend::Sqlite),
        )
        .await;
        assert_eq!(
            read,
            "SEARCH outbox_job USING INTEGER PRIMARY KEY (rowid=?)"
        );
        // What `idx_outbox_due` served before: a portal's jobs not done yet.
        let admin = plan(&db, newest_open(Some(1), 50).build(DbBackend::Sqlite)).await;
        assert_eq!(
            admin,
            "SEARCH outbox_job USING INDEX idx_outbox_open (portal_id=?)"
        );
    }
}
