use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Smart-process items are stored as `entity_type = DYNAMIC_<entityTypeId>` next to
/// `DEAL` and `LEAD` (existing rows stay as they are). `DYNAMIC_` and a type id of up
/// to ten digits do not fit the 16 characters the column was made with, so
/// PostgreSQL gets 32; SQLite does not enforce a declared length, so it has nothing
/// to change (and cannot alter a column's type in place).
#[derive(DeriveIden)]
enum Invitation {
    Table,
    EntityType,
}

async fn set_width(manager: &SchemaManager<'_>, width: u32) -> Result<(), DbErr> {
    if manager.get_database_backend() != DatabaseBackend::Postgres {
        return Ok(());
    }
    manager
        .alter_table(
            Table::alter()
                .table(Invitation::Table)
                .modify_column(
                    ColumnDef::new(Invitation::EntityType)
                        .string_len(width)
                        .not_null(),
                )
                .to_owned(),
        )
        .await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        set_width(manager, 32).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        set_width(manager, 16).await
    }
}
