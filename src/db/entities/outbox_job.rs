use sea_orm::entity::prelude::*;

/// One side effect on a portal, written in the same transaction as the change that
/// causes it and carried out by the outbox worker.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox_job")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub portal_id: Option<i64>,
    pub kind: String,
    pub payload: Json,
    #[sea_orm(unique)]
    pub idempotency_key: String,
    pub attempts: i32,
    /// Unix milliseconds.
    pub run_at: i64,
    /// Unix milliseconds; a claimed job is leased until then.
    pub locked_until: Option<i64>,
    pub lease: Option<String>,
    /// The instance holding the lease (`host:port`): a restarted instance takes its
    /// own leases back at once instead of waiting for them to lapse.
    pub lease_owner: Option<String>,
    /// Tries a portal's backpressure pushed back; they do not count toward dead.
    pub deferrals: i32,
    /// `run_at` is a backpressure pause (a probe), not a failure's backoff.
    pub paused: bool,
    pub last_error: Option<String>,
    pub result: Option<Json>,
    pub done_at: Option<DateTimeUtc>,
    pub dead_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
