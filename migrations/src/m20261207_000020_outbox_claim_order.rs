use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum OutboxJob {
    Table,
    Id,
    RunAt,
    PortalId,
    LockedUntil,
    DoneAt,
    DeadAt,
}

const INDEX: &str = "idx_outbox_claim";
const OPEN: &str = "idx_outbox_open";
const REPLACED: &str = "idx_outbox_due";

/// The open jobs in the order the outbox claims them, with what the claim filters
/// on, replacing `idx_outbox_due` (done_at, dead_at, run_at). The claim walks open
/// jobs oldest first, skipping the leased ones and those of portals this worker is
/// running; through `idx_outbox_due` every skipped job cost a read of its row, and
/// while a portal's burst was being delivered the claim read the whole backlog for
/// nothing (issue 19: 3.4 ms per claim at 60 000 open jobs, with the write turn
/// held). Here the walk reads the index alone, only open jobs are in it, and a job
/// leaves it when done instead of moving within it. Both indexes together would not
/// do: SQLite's planner, without statistics, prefers the one with more equalities.
///
/// What else `idx_outbox_due` served, a portal's jobs not done yet (the admin page's
/// list and summary, the uninstall's delete) and the leases found at start-up and
/// shutdown, `idx_outbox_open` serves: the open and dead jobs only, by portal.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
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
                    .col(OutboxJob::LockedUntil)
                    // Implied by the WHERE, but SQLite reads an index as covering
                    // only if it holds every column the query names.
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
