use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// A portal's own questionnaire: its code is what the robot's «Анкета» names.
#[derive(DeriveIden)]
enum Questionnaire {
    Table,
    Id,
    PortalId,
    Code,
    Title,
    Archived,
    CreatedAt,
    CreatedBy,
}

/// One published definition of a questionnaire. Never changed nor deleted: sent
/// links point at it.
#[derive(DeriveIden)]
enum QuestionnaireVersion {
    Table,
    Id,
    QuestionnaireId,
    Number,
    Definition,
    PublishedAt,
    PublishedBy,
}

#[derive(DeriveIden)]
enum Portal {
    Table,
    Id,
}

/// The exact version a link was sent with; null for the built-in and file templates,
/// which `questionnaire_code` + `questionnaire_version` name as before.
#[derive(DeriveIden)]
enum Invitation {
    Table,
    QuestionnaireVersionId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Questionnaire::Table)
                    .col(
                        ColumnDef::new(Questionnaire::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Questionnaire::PortalId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Questionnaire::Code)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Questionnaire::Title)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Questionnaire::Archived)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(
                        ColumnDef::new(Questionnaire::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Questionnaire::CreatedBy)
                            .big_integer()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Questionnaire::Table, Questionnaire::PortalId)
                            .to(Portal::Table, Portal::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_questionnaire_portal_code")
                    .table(Questionnaire::Table)
                    .col(Questionnaire::PortalId)
                    .col(Questionnaire::Code)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(QuestionnaireVersion::Table)
                    .col(
                        ColumnDef::new(QuestionnaireVersion::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(QuestionnaireVersion::QuestionnaireId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QuestionnaireVersion::Number)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QuestionnaireVersion::Definition)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QuestionnaireVersion::PublishedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QuestionnaireVersion::PublishedBy)
                            .big_integer()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(
                                QuestionnaireVersion::Table,
                                QuestionnaireVersion::QuestionnaireId,
                            )
                            .to(Questionnaire::Table, Questionnaire::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_questionnaire_version_number")
                    .table(QuestionnaireVersion::Table)
                    .col(QuestionnaireVersion::QuestionnaireId)
                    .col(QuestionnaireVersion::Number)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Invitation::Table)
                    .add_column(
                        ColumnDef::new(Invitation::QuestionnaireVersionId)
                            .big_integer()
                            .null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Invitation::Table)
                    .drop_column(Invitation::QuestionnaireVersionId)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(QuestionnaireVersion::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Questionnaire::Table).to_owned())
            .await
    }
}
