use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Portals stored before identities came from the trusted OAuth server may hold a
/// `client_endpoint` nobody vouched for. Their access tokens are marked expired
/// (`expires_at` = `created_at`, a moment in the past in the column's own format on
/// both backends), so the next call for each portal, and the next frame check,
/// refreshes at the trusted OAuth server first and takes its `client_endpoint`.
#[derive(DeriveIden)]
enum Portal {
    Table,
    ExpiresAt,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .exec_stmt(
                Query::update()
                    .table(Portal::Table)
                    .value(Portal::ExpiresAt, Expr::col(Portal::CreatedAt))
                    .to_owned(),
            )
            .await
    }

    /// Nothing to undo: an expired token is simply refreshed.
    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }
}
