use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// What the outbox needs to recover quickly from a crash or a portal's outage:
/// who holds a lease (so a restarted instance takes its own leases back at once),
/// how many tries a portal's backpressure deferred (they never count toward
/// "dead"), and whether the current `run_at` is such a pause (a restart probes at
/// once instead of waiting it out).
#[derive(DeriveIden)]
enum OutboxJob {
    Table,
    LeaseOwner,
    Deferrals,
    Paused,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite takes one column per ALTER TABLE.
        let columns = [
            ColumnDef::new(OutboxJob::LeaseOwner)
                .string_len(255)
                .null()
                .to_owned(),
            ColumnDef::new(OutboxJob::Deferrals)
                .integer()
                .not_null()
                .default(0)
                .to_owned(),
            ColumnDef::new(OutboxJob::Paused)
                .boolean()
                .not_null()
                .default(false)
                .to_owned(),
        ];
        for mut column in columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(OutboxJob::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            OutboxJob::Paused,
            OutboxJob::Deferrals,
            OutboxJob::LeaseOwner,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(OutboxJob::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
