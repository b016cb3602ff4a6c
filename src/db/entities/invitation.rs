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

/// The CRM document an invitation belongs to. Stored as `DEAL`, `LEAD` or
/// `DYNAMIC_<entityTypeId>` (a smart-process item, bitrix24-automation.md §A7); any
/// other stored value fails the read (it is never taken for a deal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, DeriveValueType)]
#[sea_orm(value_type = "String")]
pub enum EntityType {
    Deal,
    Lead,
    /// An item of a smart process: its type's `entityTypeId` (at least
    /// [`EntityType::FIRST_SMART_TYPE`]).
    Dynamic(u32),
}

impl EntityType {
    /// Smart processes have `entityTypeId` ≥ 128 (§A7); lower ids are the CRM's own
    /// kinds (1 lead, 2 deal, 7 quote, 31 smart invoice…), which opros does not serve.
    pub const FIRST_SMART_TYPE: u32 = 128;

    /// A smart-process type id as Bitrix24 names it, if it is one.
    pub fn dynamic(type_id: u32) -> Option<Self> {
        (type_id >= Self::FIRST_SMART_TYPE).then_some(EntityType::Dynamic(type_id))
    }

    /// Lower-case name used by `crm.timeline.comment.add` (protocol §12.4; §A7:
    /// `dynamic_<id>`) and in card URLs.
    pub fn timeline_name(self) -> String {
        match self {
            EntityType::Deal => "deal".to_owned(),
            EntityType::Lead => "lead".to_owned(),
            EntityType::Dynamic(t) => format!("dynamic_{t}"),
        }
    }

    /// What a robot or an outgoing webhook names: `DEAL`, `CCrmDocumentLead`,
    /// `DYNAMIC_128`, case-insensitive.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "DEAL" | "CCRMDOCUMENTDEAL" => Some(EntityType::Deal),
            "LEAD" | "CCRMDOCUMENTLEAD" => Some(EntityType::Lead),
            other => other
                .strip_prefix("DYNAMIC_")
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .and_then(Self::dynamic),
        }
    }
}

impl std::fmt::Display for EntityType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntityType::Deal => f.write_str("DEAL"),
            EntityType::Lead => f.write_str("LEAD"),
            EntityType::Dynamic(t) => write!(f, "DYNAMIC_{t}"),
        }
    }
}

/// A stored entity type that is none of ours.
#[derive(Debug)]
pub struct UnknownEntityType;

impl std::fmt::Display for UnknownEntityType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unknown CRM entity type")
    }
}

impl std::error::Error for UnknownEntityType {}

/// Only the exact stored spelling (`DEAL`, `LEAD`, `DYNAMIC_<id>`): the database
/// holds what [`Display`](std::fmt::Display) wrote, nothing lenient.
impl std::str::FromStr for EntityType {
    type Err = UnknownEntityType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match EntityType::parse(s) {
            Some(kind) if kind.to_string() == s => Ok(kind),
            _ => Err(UnknownEntityType),
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
