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
    /// Decides how results reach the portal.
    pub channel: Channel,
    pub entity_type: EntityType,
    pub entity_id: i64,
    pub patient_name: String,
    pub questionnaire_code: String,
    pub questionnaire_version: i32,
    /// The portal's own version the link was sent with (`questionnaire_version`);
    /// `None`: a built-in or file template, by code and version above.
    pub questionnaire_version_id: Option<i64>,
    /// Expiry is not stored: it is derived from `expires_at`.
    pub status: Status,
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

/// Where a link stands, as stored. Any other stored value fails the read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum Status {
    #[sea_orm(string_value = "sent")]
    Sent,
    /// The patient opened the page.
    #[sea_orm(string_value = "opened")]
    Opened,
    /// The answers are submitted; the link shows only «thank you».
    #[sea_orm(string_value = "completed")]
    Completed,
}

/// How results reach the portal. Stored as `app` or `webhook`; any other stored
/// value fails the read instead of being taken for one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum Channel {
    #[sea_orm(string_value = "app")]
    /// Installed local application: results go through the portal's OAuth tokens.
    App,
    #[sea_orm(string_value = "webhook")]
    /// Single-portal setups (webhook robot, outgoing webhook): results go through
    /// `BITRIX24_WEBHOOK_URL`.
    Webhook,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::App => "app",
            Channel::Webhook => "webhook",
        }
    }
}

/// The CRM document an invitation belongs to. Stored as `DEAL` or `LEAD`; any other
/// stored value fails the read (it is never taken for a deal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum EntityType {
    #[sea_orm(string_value = "DEAL")]
    Deal,
    #[sea_orm(string_value = "LEAD")]
    Lead,
}

impl EntityType {
    pub fn as_str(self) -> &'static str {
        match self {
            EntityType::Deal => "DEAL",
            EntityType::Lead => "LEAD",
        }
    }

    /// Lower-case name used by `crm.timeline.comment.add` (protocol §12.4).
    pub fn timeline_name(self) -> &'static str {
        match self {
            EntityType::Deal => "deal",
            EntityType::Lead => "lead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "DEAL" | "CCRMDOCUMENTDEAL" => Some(EntityType::Deal),
            "LEAD" | "CCRMDOCUMENTLEAD" => Some(EntityType::Lead),
            _ => None,
        }
    }
}

impl std::fmt::Display for EntityType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
