//! sea-orm entities, one file per table (schema in `migrations/`).

pub mod audit_event;
pub mod invitation;
pub mod outbox_job;
pub mod portal;
pub mod questionnaire;
pub mod questionnaire_version;
pub mod response;
pub mod setting;
