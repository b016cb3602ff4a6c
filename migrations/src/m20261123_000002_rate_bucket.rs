use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Portal request buckets shared by every instance of the service (PostgreSQL
/// deployments); one row per portal host, holding the bucket's theoretical
/// empty time in microseconds of the database clock.
#[derive(DeriveIden)]
enum RateBucket {
    Table,
    Bucket,
    TatUs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RateBucket::Table)
                    .col(
                        ColumnDef::new(RateBucket::Bucket)
                            .string_len(255)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(RateBucket::TatUs).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Only timing state lives here: dropping it loses nothing.
        manager
            .drop_table(Table::drop().table(RateBucket::Table).to_owned())
            .await
    }
}
