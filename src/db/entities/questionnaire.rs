use sea_orm::entity::prelude::*;

/// A questionnaire a portal owns. Its definitions are the rows of
/// `questionnaire_version`; `code` is unique within the portal.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "questionnaire")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub portal_id: i64,
    pub code: String,
    /// The latest version's title, kept here for lists.
    pub title: String,
    /// Not offered to robots; links already sent keep working.
    pub archived: bool,
    pub created_at: DateTimeUtc,
    /// The Bitrix24 user id of the administrator who created it.
    pub created_by: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
