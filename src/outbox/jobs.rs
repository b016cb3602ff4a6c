//! Storage side of the outbox: claiming due jobs under a lease and recording outcomes.
//! Portable between SQLite and PostgreSQL: a claim is one conditional UPDATE that
//! stamps a random lease, and the claimer reads back the rows carrying its lease, so
//! two workers can never both own a row.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
    sea_query::{Expr, ExprTrait},
};

use crate::db::entities::outbox_job;

/// How long a claimed job is ours; longer than any call with its retries takes.
pub const LEASE_MS: i64 = 5 * 60 * 1000;
/// After this many attempts a job is dead and waits for an admin.
pub const MAX_ATTEMPTS: i32 = 10;

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

/// Claims up to `limit` due jobs, oldest first.
pub async fn claim<C: ConnectionTrait>(
    db: &C,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<outbox_job::Model>, DbErr> {
    let now_ms = now.timestamp_millis();
    let ids: Vec<i64> = outbox_job::Entity::find()
        .select_only()
        .column(outbox_job::Column::Id)
        .filter(due(now_ms))
        .order_by_asc(outbox_job::Column::RunAt)
        .order_by_asc(outbox_job::Column::Id)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let lease = crate::invitations::links::new_invitation_id();
    // The due condition is repeated in the UPDATE: between the SELECT and here another
    // worker may have claimed some of these rows, and only this check is atomic.
    outbox_job::Entity::update_many()
        .col_expr(outbox_job::Column::Lease, Expr::value(lease.clone()))
        .col_expr(
            outbox_job::Column::LockedUntil,
            Expr::value(now_ms + LEASE_MS),
        )
        .col_expr(
            outbox_job::Column::Attempts,
            Expr::col(outbox_job::Column::Attempts).add(1),
        )
        .filter(outbox_job::Column::Id.is_in(ids))
        .filter(due(now_ms))
        .exec(db)
        .await?;
    outbox_job::Entity::find()
        .filter(outbox_job::Column::Lease.eq(lease))
        .filter(outbox_job::Column::DoneAt.is_null())
        .order_by_asc(outbox_job::Column::Id)
        .all(db)
        .await
}

/// Milliseconds until the next job is due, if any is waiting.
pub async fn next_due_in<C: ConnectionTrait>(
    db: &C,
    now: DateTime<Utc>,
) -> Result<Option<i64>, DbErr> {
    let next: Option<i64> = outbox_job::Entity::find()
        .select_only()
        .column_as(outbox_job::Column::RunAt.min(), "next")
        .filter(outbox_job::Column::DoneAt.is_null())
        .filter(outbox_job::Column::DeadAt.is_null())
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten();
    Ok(next.map(|at| Ord::max(at - now.timestamp_millis(), 0)))
}

/// What happened to one job.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done(serde_json::Value),
    RetryAt(DateTime<Utc>, String),
    Dead(String),
}

/// Records an outcome, but only while the lease is still ours: a worker that lost its
/// lease (it was too slow) must not overwrite the new owner's result.
pub async fn finish<C: ConnectionTrait>(
    db: &C,
    job: &outbox_job::Model,
    outcome: Outcome,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let mut update = outbox_job::Entity::update_many()
        .col_expr(
            outbox_job::Column::LockedUntil,
            Expr::value(Option::<i64>::None),
        )
        .col_expr(
            outbox_job::Column::Lease,
            Expr::value(Option::<String>::None),
        );
    update = match outcome {
        Outcome::Done(result) => update
            .col_expr(outbox_job::Column::DoneAt, Expr::value(now))
            .col_expr(outbox_job::Column::Result, Expr::value(result))
            .col_expr(
                outbox_job::Column::LastError,
                Expr::value(Option::<String>::None),
            ),
        Outcome::RetryAt(at, error) => update
            .col_expr(
                outbox_job::Column::RunAt,
                Expr::value(at.timestamp_millis()),
            )
            .col_expr(outbox_job::Column::LastError, Expr::value(error)),
        Outcome::Dead(error) => update
            .col_expr(outbox_job::Column::DeadAt, Expr::value(now))
            .col_expr(outbox_job::Column::LastError, Expr::value(error)),
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

/// Jobs not done yet (pending and dead), newest first, for the admin page.
pub async fn open_jobs<C: ConnectionTrait>(
    db: &C,
    portal_id: Option<i64>,
    limit: u64,
) -> Result<Vec<outbox_job::Model>, DbErr> {
    let mut q = outbox_job::Entity::find()
        .filter(outbox_job::Column::DoneAt.is_null())
        .order_by_desc(outbox_job::Column::Id)
        .limit(limit);
    q = match portal_id {
        Some(p) => q.filter(outbox_job::Column::PortalId.eq(p)),
        None => q.filter(outbox_job::Column::PortalId.is_null()),
    };
    q.all(db).await
}
