//! Fixed SQL for the robot's path, which every robot run takes (issue 19).
//!
//! sea-orm builds each query's text anew (sea-query), and its `.one()` ends in
//! `LIMIT ?`: SQLite marks a statement whose LIMIT is a bound parameter to be
//! compiled again at every use (`sqlite3ExprIsInteger` → `sqlite3VdbeSetVarmask`), so
//! sqlx's cache of prepared statements never helped those. A profile of the robot
//! under load put 18 % of all instructions in `sqlite3Reprepare` alone. The text
//! here is constant, binds no LIMIT and looks rows up by unique keys, so each
//! connection prepares it once. `$n` placeholders read the same on both backends
//! (sqlx's SQLite driver takes `$NNN` as the n-th parameter).

use sea_orm::{ConnectionTrait, DbErr, EntityTrait, Statement, Value};

use super::entities::{invitation, portal};

/// What a robot call needs of its portal: the application-token check's inputs and
/// the administrator's settings, in one round trip.
#[derive(Debug, Clone)]
pub struct PortalCaller {
    pub id: i64,
    pub domain: String,
    pub status: portal::Status,
    pub application_token: Option<String>,
    /// `portal:<id>:link_days` and `portal:<id>:reuse_active` as stored, if set.
    pub link_days: Option<String>,
    pub reuse_active: Option<String>,
}

const PORTAL_CALLER: &str = "SELECT p.id, p.domain, p.status, p.application_token, \
     (SELECT s.value FROM setting s WHERE s.key = 'portal:' || p.id || ':link_days'), \
     (SELECT s.value FROM setting s WHERE s.key = 'portal:' || p.id || ':reuse_active') \
     FROM portal p WHERE p.member_id = $1";

/// The portal `member_id` names, with its settings (see `invitations::portal_settings`).
pub async fn portal_caller<C: ConnectionTrait>(
    db: &C,
    member_id: &str,
) -> Result<Option<PortalCaller>, DbErr> {
    let stmt = Statement::from_sql_and_values(
        db.get_database_backend(),
        PORTAL_CALLER,
        [member_id.into()],
    );
    let Some(row) = db.query_one_raw(stmt).await? else {
        return Ok(None);
    };
    Ok(Some(PortalCaller {
        id: row.try_get_by_index(0)?,
        domain: row.try_get_by_index(1)?,
        status: row.try_get_by_index(2)?,
        application_token: row.try_get_by_index(3)?,
        link_days: row.try_get_by_index(4)?,
        reuse_active: row.try_get_by_index(5)?,
    }))
}

const INSERT_INVITATION: &str = "INSERT INTO invitation (id, portal_id, channel, entity_type, \
     entity_id, patient_name, questionnaire_code, questionnaire_version, status, dedupe_key, \
     created_at, opened_at, completed_at, expires_at, questionnaire_version_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
     ON CONFLICT (dedupe_key) DO NOTHING";

/// Inserts `row` unless its `dedupe_key` is taken; true if it was inserted. The
/// values are bound as sea-orm's own insert binds them, so rows read back the same.
pub async fn insert_invitation<C: ConnectionTrait>(
    db: &C,
    row: &invitation::Model,
) -> Result<bool, DbErr> {
    let values: [Value; 15] = [
        row.id.clone().into(),
        row.portal_id.into(),
        row.channel.into(),
        row.entity_type.into(),
        row.entity_id.into(),
        row.patient_name.clone().into(),
        row.questionnaire_code.clone().into(),
        row.questionnaire_version.into(),
        row.status.into(),
        row.dedupe_key.clone().into(),
        row.created_at.into(),
        row.opened_at.into(),
        row.completed_at.into(),
        row.expires_at.into(),
        row.questionnaire_version_id.into(),
    ];
    let stmt = Statement::from_sql_and_values(db.get_database_backend(), INSERT_INVITATION, values);
    Ok(db.execute_raw(stmt).await?.rows_affected() > 0)
}

const INVITATION_BY_KEY: &str = "SELECT * FROM invitation WHERE dedupe_key = $1";

/// The invitation a request with this key made (the key is unique).
pub async fn invitation_by_dedupe_key<C: ConnectionTrait>(
    db: &C,
    key: &str,
) -> Result<Option<invitation::Model>, DbErr> {
    invitation::Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(
            db.get_database_backend(),
            INVITATION_BY_KEY,
            [key.into()],
        ))
        .one(db)
        .await
}

/// One outbox row as `outbox::enqueue_all` queues it; the other columns keep their
/// defaults (never tried, not leased, not paused).
pub struct NewJob {
    pub portal_id: Option<i64>,
    pub kind: &'static str,
    pub payload: serde_json::Value,
    pub idempotency_key: String,
    pub run_at: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Queues `jobs` in one statement; a key already queued keeps its job. The text
/// depends only on the number of rows, so it is prepared once per count.
pub async fn insert_jobs<C: ConnectionTrait>(db: &C, jobs: Vec<NewJob>) -> Result<(), DbErr> {
    if jobs.is_empty() {
        return Ok(());
    }
    const COLUMNS: usize = 6;
    let mut sql = String::from(
        "INSERT INTO outbox_job (portal_id, kind, payload, idempotency_key, attempts, run_at, created_at) VALUES ",
    );
    let mut values = Vec::with_capacity(jobs.len() * COLUMNS);
    for (i, job) in jobs.into_iter().enumerate() {
        let n = i * COLUMNS;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, 0, ${}, ${})",
            n + 1,
            n + 2,
            n + 3,
            n + 4,
            n + 5,
            n + 6
        ));
        values.extend([
            job.portal_id.into(),
            job.kind.into(),
            job.payload.into(),
            job.idempotency_key.into(),
            job.run_at.into(),
            job.created_at.into(),
        ]);
    }
    sql.push_str(" ON CONFLICT (idempotency_key) DO NOTHING");
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        sql,
        values,
    ))
    .await
    .map(|_| ())
}
