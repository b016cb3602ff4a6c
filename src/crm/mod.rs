//! What opros knows of a CRM document: which kind (deal or lead), which record, over
//! which channel its results go, and the patient's name read from it. Used by the
//! handlers, `invitations` and the outbox alike, so it sits below all of them.

pub mod patient;

use crate::db::entities::invitation;
pub use crate::db::entities::invitation::{Channel, EntityType};

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
            kind: row.entity_type,
            id: row.entity_id,
        }
    }
}
