use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum OutboxJob {
    Table,
    Id,
    RunAt,
    PortalId,
    DoneAt,
    DeadAt,
}

const INDEX: &str = "idx_outbox_claim";
const OPEN: &str = "idx_outbox_open";
const REPLACED: &str = "idx_outbox_due";

/// The open jobs in the order the outbox claims them, with their portal, replacing
/// `idx_outbox_due` (done_at, dead_at, run_at). The claim walks open jobs oldest
/// first, skipping those of portals this worker is running and the leased ones;
/// through `idx_outbox_due` every skipped job cost a read of its row, and while a
/// portal's burst was being delivered the claim read the whole backlog for nothing
/// (issue 19: 3.4 ms per claim at 60 000 open jobs, with the write turn held). Here
/// a job of a portal being run is skipped on its index entry, only open jobs are in
/// the index, and a job leaves it when done instead of moving within it. Both indexes together would not
/// do: SQLite's planner, without statistics, prefers the one with more equalities.
///
/// SQLite only. PostgreSQL keeps `idx_outbox_due`: its planner has statistics and
/// walks that index well, while with these partial indexes it chose a parallel scan
/// of the whole table for every claim (the robot bench fell from 4 700 to 2 500
/// calls/s).
///
/// What else `idx_outbox_due` served, a portal's jobs not done yet (the admin page's
/// list and summary, the uninstall's delete) and the leases found at start-up and
/// shutdown, `idx_outbox_open` serves: the open and dead jobs only, by portal.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        manager
            .drop_index(
                Index::drop()
                    .name(REPLACED)
                    .table(OutboxJob::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(OutboxJob::Table)
                    .col(OutboxJob::RunAt)
                    .col(OutboxJob::Id)
                    .col(OutboxJob::PortalId)
                    // Not `locked_until`: a claim sets it, and on PostgreSQL an UPDATE
                    // of an indexed column writes a new entry into every index of the
                    // table (no HOT update); the claim bench fell from 4 700 to 2 000
                    // calls/s with it. Leased jobs are mostly of portals being run,
                    // which the portal column already skips.
                    .col(OutboxJob::DoneAt)
                    .col(OutboxJob::DeadAt)
                    .and_where(Expr::col(OutboxJob::DoneAt).is_null())
                    .and_where(Expr::col(OutboxJob::DeadAt).is_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(OPEN)
                    .table(OutboxJob::Table)
                    .col(OutboxJob::PortalId)
                    .col(OutboxJob::Id)
                    .and_where(Expr::col(OutboxJob::DoneAt).is_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        for index in [OPEN, INDEX] {
            manager
                .drop_index(Index::drop().name(index).table(OutboxJob::Table).to_owned())
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name(REPLACED)
                    .table(OutboxJob::Table)
                    .col(OutboxJob::DoneAt)
                    .col(OutboxJob::DeadAt)
                    .col(OutboxJob::RunAt)
                    .to_owned(),
            )
            .await
    }
}
