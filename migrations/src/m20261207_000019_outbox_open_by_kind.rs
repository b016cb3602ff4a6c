use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum OutboxJob {
    Table,
    Kind,
    DoneAt,
    DeadAt,
}

const INDEX: &str = "idx_outbox_open_by_kind";

/// The open jobs of one kind: a new link wakes its document's waits (an UPDATE of
/// the open `await_survey` jobs under a key prefix) in every robot call's
/// transaction, and without this index that UPDATE went through every open job of
/// every kind, the whole backlog of a burst (issue 19).
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(OutboxJob::Table)
                    .col(OutboxJob::Kind)
                    .col(OutboxJob::DoneAt)
                    .col(OutboxJob::DeadAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(OutboxJob::Table).to_owned())
            .await
    }
}
