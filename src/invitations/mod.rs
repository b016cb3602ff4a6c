//! Invitations: one survey link for one CRM document, created by the robot, the legacy
//! webhooks or a doctor, and the rules for reusing an active one.

pub mod issue;
pub mod lifecycle;
pub mod links;
pub mod patient;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder};

use crate::db::entities::invitation;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Installed local application: results go through the portal's OAuth tokens.
    App,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntityType {
    Deal,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntityRef {
    pub kind: EntityType,
    pub id: i64,
}

impl EntityRef {
    /// `DEAL_4217` / `LEAD_12` from a business-process `document_id[2]` (protocol §4.3).
    pub fn from_document_id(doc: &str) -> Option<Self> {
        let (kind, id) = doc.rsplit_once('_')?;
        let kind = EntityType::parse(kind)?;
        let id: i64 = id.parse().ok().filter(|n| *n > 0)?;
        Some(EntityRef { kind, id })
    }

    pub fn from_row(row: &invitation::Model) -> Self {
        EntityRef {
            kind: EntityType::parse(&row.entity_type).unwrap_or(EntityType::Deal),
            id: row.entity_id,
        }
    }
}

pub const SENT: &str = "sent";
pub const OPENED: &str = "opened";
pub const COMPLETED: &str = "completed";
pub const EXPIRED: &str = "expired";

/// What a caller asks for; `dedupe_key` makes a repeated request (the same robot
/// `event_token`, the same outgoing event) return the invitation it created first.
#[derive(Debug, Clone)]
pub struct NewInvitation {
    pub portal_id: Option<i64>,
    pub channel: Channel,
    pub entity: EntityRef,
    pub patient_name: String,
    pub questionnaire_code: String,
    pub questionnaire_version: u32,
    pub lifetime_days: u32,
    pub reuse_active: bool,
    pub dedupe_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub invitation: invitation::Model,
    /// True when an existing invitation was returned (repeat or active reuse).
    pub existing: bool,
}

/// Creates the invitation, or returns the one a repeat of the same request made, or
/// (when asked) the active one of the same document and questionnaire.
pub async fn create_or_reuse<C: ConnectionTrait>(
    db: &C,
    new: &NewInvitation,
    now: DateTime<Utc>,
) -> Result<Outcome, DbErr> {
    let existing = |invitation| {
        Ok(Outcome {
            invitation,
            existing: true,
        })
    };
    if new.reuse_active {
        if let Some(key) = &new.dedupe_key
            && let Some(found) = by_dedupe_key(db, key).await?
        {
            return existing(found);
        }
        if let Some(active) =
            find_active(db, new.portal_id, new.entity, &new.questionnaire_code, now).await?
        {
            return existing(active);
        }
    }
    // Times as the database keeps them (microseconds), so the returned row equals
    // the stored one.
    let row = invitation::Model {
        id: links::new_invitation_id(),
        portal_id: new.portal_id,
        channel: new.channel.as_str().to_owned(),
        entity_type: new.entity.kind.as_str().to_owned(),
        entity_id: new.entity.id,
        patient_name: new.patient_name.chars().take(255).collect(),
        questionnaire_code: new.questionnaire_code.clone(),
        questionnaire_version: new.questionnaire_version as i32,
        status: SENT.to_owned(),
        dedupe_key: new.dedupe_key.clone(),
        created_at: now.trunc_subsecs(6),
        opened_at: None,
        completed_at: None,
        expires_at: (now + Duration::days(i64::from(new.lifetime_days))).trunc_subsecs(6),
    };
    // A repeated request (same key) inserts nothing instead of failing, which on
    // PostgreSQL would also abort the caller's transaction.
    if crate::db::prepared::insert_invitation(db, &row).await? {
        return Ok(Outcome {
            invitation: row,
            existing: false,
        });
    }
    let key = new.dedupe_key.as_deref().unwrap_or_default();
    match by_dedupe_key(db, key).await? {
        Some(found) => existing(found),
        None => Err(DbErr::RecordNotInserted),
    }
}

async fn by_dedupe_key<C: ConnectionTrait>(
    db: &C,
    key: &str,
) -> Result<Option<invitation::Model>, DbErr> {
    crate::db::prepared::invitation_by_dedupe_key(db, key).await
}

async fn find_active<C: ConnectionTrait>(
    db: &C,
    portal_id: Option<i64>,
    entity: EntityRef,
    code: &str,
    now: DateTime<Utc>,
) -> Result<Option<invitation::Model>, DbErr> {
    let mut q = invitation::Entity::find()
        .filter(invitation::Column::EntityType.eq(entity.kind.as_str()))
        .filter(invitation::Column::EntityId.eq(entity.id))
        .filter(invitation::Column::QuestionnaireCode.eq(code))
        .filter(invitation::Column::Status.ne(COMPLETED))
        .order_by_desc(invitation::Column::CreatedAt);
    q = match portal_id {
        Some(p) => q.filter(invitation::Column::PortalId.eq(p)),
        None => q.filter(invitation::Column::PortalId.is_null()),
    };
    let rows = q.all(db).await?;
    // Leave an hour of margin: a link about to expire is not worth sending again.
    Ok(rows
        .into_iter()
        .find(|r| r.expires_at > now + Duration::hours(1)))
}

/// Invitations of one document, newest first (doctor's tab).
pub async fn of_entity<C: ConnectionTrait>(
    db: &C,
    portal_id: Option<i64>,
    entity: EntityRef,
) -> Result<Vec<invitation::Model>, DbErr> {
    let mut q = invitation::Entity::find()
        .filter(invitation::Column::EntityType.eq(entity.kind.as_str()))
        .filter(invitation::Column::EntityId.eq(entity.id))
        .order_by_desc(invitation::Column::CreatedAt);
    q = match portal_id {
        Some(p) => q.filter(invitation::Column::PortalId.eq(p)),
        None => q.filter(invitation::Column::PortalId.is_null()),
    };
    q.all(db).await
}

/// The status a person sees: `expired` is derived, never stored.
pub fn status_of(row: &invitation::Model, now: DateTime<Utc>) -> &'static str {
    match row.status.as_str() {
        COMPLETED => COMPLETED,
        _ if row.expires_at <= now => EXPIRED,
        OPENED => OPENED,
        _ => SENT,
    }
}

pub fn status_label(status: &str) -> &'static str {
    match status {
        COMPLETED => "заполнена",
        EXPIRED => "истекла",
        OPENED => "открыта",
        _ => "отправлена",
    }
}

pub fn is_unique_violation(e: &DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_ids() {
        assert_eq!(
            EntityRef::from_document_id("DEAL_4217"),
            Some(EntityRef {
                kind: EntityType::Deal,
                id: 4217
            })
        );
        assert_eq!(
            EntityRef::from_document_id("LEAD_12").map(|e| e.kind),
            Some(EntityType::Lead)
        );
        assert_eq!(EntityRef::from_document_id("CONTACT_1"), None);
        assert_eq!(EntityRef::from_document_id("DEAL_x"), None);
        assert_eq!(EntityRef::from_document_id("DEAL_0"), None);
    }
}
