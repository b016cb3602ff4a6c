use sea_orm::entity::prelude::*;

/// A survey link sent for one CRM document: what was asked (questionnaire and its
/// version), of whom, through which channel, and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "invitation")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// `None` for the single-portal webhook setups.
    pub portal_id: Option<i64>,
    /// `app`, `webhook` or `outgoing`: decides how results reach the portal.
    pub channel: String,
    /// `DEAL` or `LEAD`.
    pub entity_type: String,
    pub entity_id: i64,
    pub patient_name: String,
    pub questionnaire_code: String,
    pub questionnaire_version: i32,
    /// `sent`, `opened` or `completed`; expiry is derived from `expires_at`.
    pub status: String,
    #[sea_orm(unique)]
    pub dedupe_key: Option<String>,
    pub created_at: DateTimeUtc,
    pub opened_at: Option<DateTimeUtc>,
    pub completed_at: Option<DateTimeUtc>,
    pub expires_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
