//! What opros knows of a CRM document: which kind (deal or lead), which record, over
//! which channel its results go, and the patient's name read from it. Used by the
//! handlers, `invitations` and the outbox alike, so it sits below all of them.

pub mod patient;

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
