use sea_orm::entity::prelude::*;

/// One published definition of a portal's questionnaire, numbered 1, 2, 3… within
/// it. Never updated nor deleted: an invitation points at the version it was sent
/// with (`invitation.questionnaire_version_id`).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "questionnaire_version")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub questionnaire_id: i64,
    pub number: i32,
    /// The definition as JSON text, exactly the schema of a `SURVEYS_DIR` file.
    #[sea_orm(column_type = "Text")]
    pub definition: String,
    pub published_at: DateTimeUtc,
    /// The Bitrix24 user id of the administrator who published it.
    pub published_by: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
