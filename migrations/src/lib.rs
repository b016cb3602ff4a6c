//! Schema migrations, shared by SQLite and PostgreSQL: every step is written with
//! sea-query builders so one code path serves both backends. Never edit a released
//! migration; add a new one.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_init;
mod m20261123_000002_rate_bucket;
mod m20261207_000003_outbox_recovery;
mod m20261207_000004_portal_revouch;
mod m20261207_000005_response_outcome;
mod m20261207_000010_questionnaires;
mod m20261207_000016_smart_process_items;
mod m20261207_000019_outbox_open_by_kind;
mod m20261207_000020_outbox_claim_order;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_init::Migration),
            Box::new(m20261123_000002_rate_bucket::Migration),
            Box::new(m20261207_000003_outbox_recovery::Migration),
            Box::new(m20261207_000004_portal_revouch::Migration),
            Box::new(m20261207_000005_response_outcome::Migration),
            Box::new(m20261207_000010_questionnaires::Migration),
            Box::new(m20261207_000016_smart_process_items::Migration),
            Box::new(m20261207_000019_outbox_open_by_kind::Migration),
            Box::new(m20261207_000020_outbox_claim_order::Migration),
        ]
    }
}
