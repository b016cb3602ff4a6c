//! Per-portal settings the administrator changes on the application page: the default
//! link lifetime and whether an active link is sent again. Stored in the `setting`
//! table under `portal:<id>:…`; absent keys fall back to the service's configuration.

use sea_orm::{ConnectionTrait, DbErr};

use crate::db::{get_setting, put_setting};

/// What the robot uses when its own properties leave the choice open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortalSettings {
    /// 1..=365.
    pub link_days: u32,
    pub reuse_active: bool,
}

fn key(portal_id: i64, name: &str) -> String {
    format!("portal:{portal_id}:{name}")
}

/// The portal's settings; `default_days` is `SURVEY_LINK_DAYS`.
pub async fn load<C: ConnectionTrait>(
    db: &C,
    portal_id: i64,
    default_days: u32,
) -> Result<PortalSettings, DbErr> {
    let link_days = get_setting(db, &key(portal_id, "link_days")).await?;
    let reuse_active = get_setting(db, &key(portal_id, "reuse_active")).await?;
    Ok(from_stored(
        link_days.as_deref(),
        reuse_active.as_deref(),
        default_days,
    ))
}

/// The settings from their stored values (absent: `None`), as `load` reads them.
pub fn from_stored(
    link_days: Option<&str>,
    reuse_active: Option<&str>,
    default_days: u32,
) -> PortalSettings {
    PortalSettings {
        link_days: link_days
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|d| (1..=365).contains(d))
            .unwrap_or(default_days),
        reuse_active: reuse_active.is_none_or(|v| v != "N"),
    }
}

/// Stores both settings; `link_days` must already be in range.
pub async fn save<C: ConnectionTrait>(
    db: &C,
    portal_id: i64,
    settings: PortalSettings,
) -> Result<(), DbErr> {
    put_setting(
        db,
        &key(portal_id, "link_days"),
        &settings.link_days.to_string(),
    )
    .await?;
    put_setting(
        db,
        &key(portal_id, "reuse_active"),
        if settings.reuse_active { "Y" } else { "N" },
    )
    .await
}
