//! Invitations: one survey link for one CRM document, created by the robot, the legacy
//! webhooks or a doctor, and the rules for reusing an active one.

pub mod issue;
pub mod lifecycle;
pub mod links;
pub mod portal_settings;

pub use crate::crm::{Channel, EntityRef, EntityType, patient};

use chrono::{DateTime, Duration, SubsecRound, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder};

use crate::db::entities::invitation;

pub use crate::db::entities::invitation::Status;

pub const SENT: Status = Status::Sent;
pub const OPENED: Status = Status::Opened;
pub const COMPLETED: Status = Status::Completed;

/// The statuses a person sees (the patient API, the deal tab): the stored ones and
/// `expired`, which is derived from `expires_at`, never stored.
pub mod shown {
    pub const SENT: &str = "sent";
    pub const OPENED: &str = "opened";
    pub const COMPLETED: &str = "completed";
    pub const EXPIRED: &str = "expired";
}

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
    /// The portal's own version (`questionnaires::Resolved::version_id`), if any.
    pub questionnaire_version_id: Option<i64>,
    pub lifetime_days: u32,
    pub reuse_active: bool,
    pub dedupe_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Issued {
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
) -> Result<Issued, DbErr> {
    let existing = |invitation| {
        Ok(Issued {
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
        id: links::new_invitation_id().into_string(),
        portal_id: new.portal_id,
        channel: new.channel,
        entity_type: new.entity.kind,
        entity_id: new.entity.id,
        patient_name: new.patient_name.chars().take(255).collect(),
        questionnaire_code: new.questionnaire_code.clone(),
        questionnaire_version: new.questionnaire_version as i32,
        questionnaire_version_id: new.questionnaire_version_id,
        status: SENT,
        dedupe_key: new.dedupe_key.clone(),
        created_at: now.trunc_subsecs(6),
        opened_at: None,
        completed_at: None,
        expires_at: (now + Duration::days(i64::from(new.lifetime_days))).trunc_subsecs(6),
    };
    // A repeated request (same key) inserts nothing instead of failing, which on
    // PostgreSQL would also abort the caller's transaction.
    if crate::db::prepared::insert_invitation(db, &row).await? {
        return Ok(Issued {
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
        .filter(invitation::Column::EntityType.eq(entity.kind))
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
        .filter(invitation::Column::EntityType.eq(entity.kind))
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
    match row.status {
        Status::Completed => shown::COMPLETED,
        _ if row.expires_at <= now => shown::EXPIRED,
        Status::Opened => shown::OPENED,
        Status::Sent => shown::SENT,
    }
}

pub fn status_label(status: &str) -> &'static str {
    match status {
        shown::COMPLETED => "заполнена",
        shown::EXPIRED => "истекла",
        shown::OPENED => "открыта",
        _ => "отправлена",
    }
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
