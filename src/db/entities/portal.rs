use sea_orm::entity::prelude::*;

/// An installed Bitrix24 portal (OAuth local application), keyed by `member_id`,
/// which survives domain renames.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "portal")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub member_id: String,
    pub domain: String,
    pub client_endpoint: String,
    pub server_endpoint: Option<String>,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_at: Option<DateTimeUtc>,
    pub application_token: Option<String>,
    pub scope: Option<String>,
    pub installed_by: Option<i64>,
    pub status: Status,
    /// The last registration check (robot, tab, events, field) as JSON.
    pub registration: Option<Json>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Whether the application is in the portal. Any other stored value fails the read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum Status {
    #[sea_orm(string_value = "installed")]
    Installed,
    /// `ONAPPUNINSTALL` confirmed: the tokens are gone (and, with `CLEAN`, the data).
    #[sea_orm(string_value = "uninstalled")]
    Uninstalled,
}

pub const INSTALLED: Status = Status::Installed;
pub const UNINSTALLED: Status = Status::Uninstalled;
