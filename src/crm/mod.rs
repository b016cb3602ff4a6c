//! What opros knows of a CRM document: which kind (deal, lead or smart-process item),
//! how each kind is named and read (`document`), which record, over
//! which channel its results go, and the patient's name read from it. Used by the
//! handlers, `invitations` and the outbox alike, so it sits below all of them.

pub mod document;
pub mod patient;

use serde::{Deserialize, Serialize};

use crate::db::entities::invitation;
pub use crate::db::entities::invitation::{Channel, EntityType};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntityRef {
    pub kind: EntityType,
    pub id: i64,
}

impl EntityRef {
    /// `DEAL_4217` / `LEAD_12` / `DYNAMIC_128_5` from a business-process `document_id[2]` (protocol §4.3).
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

/// An invitation's id: 20 characters (`db::ordered_id`; 12 random ones before
/// issue 19) carried by the link's token, the timeline marker and the outbox's
/// payloads. A type of its own, so it cannot be mixed up with the other strings
/// around it (a lease, an event token, a link token).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InvitationId(String);

impl InvitationId {
    /// A fresh id, after those made before it.
    pub fn fresh() -> Self {
        InvitationId(crate::db::ordered_id())
    }

    /// The id of a stored invitation.
    pub fn of(row: &invitation::Model) -> Self {
        InvitationId(row.id.clone())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as the `invitation` table's key.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl From<String> for InvitationId {
    fn from(id: String) -> Self {
        InvitationId(id)
    }
}

impl std::fmt::Display for InvitationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
