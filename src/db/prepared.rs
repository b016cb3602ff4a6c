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

use std::collections::HashSet;
use std::ops::Range;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, EntityTrait, Statement, Value};

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

const INSERT_INVITATION_HEAD: &str = "INSERT INTO invitation (id, portal_id, channel, \
     entity_type, entity_id, patient_name, questionnaire_code, questionnaire_version, status, \
     dedupe_key, created_at, opened_at, completed_at, expires_at, questionnaire_version_id) VALUES";

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
    let stmt = Statement::from_sql_and_values(
        db.get_database_backend(),
        INSERT_INVITATION,
        invitation_values(row),
    );
    Ok(db.execute_raw(stmt).await?.rows_affected() > 0)
}

/// Inserts `rows`, each unless its `dedupe_key` is taken (by a stored row or an
/// earlier one of `rows`), in a statement per [`pow2_chunks`] chunk; returns the ids
/// of the rows inserted.
pub async fn insert_invitations<C: ConnectionTrait>(
    db: &C,
    rows: &[invitation::Model],
) -> Result<HashSet<String>, DbErr> {
    const COLUMNS: usize = 15;
    let backend = db.get_database_backend();
    let mut inserted = HashSet::with_capacity(rows.len());
    for range in pow2_chunks(rows.len()) {
        let chunk = &rows[range];
        let mut sql = String::from(INSERT_INVITATION_HEAD);
        let mut values = Vec::with_capacity(chunk.len() * COLUMNS);
        for (i, row) in chunk.iter().enumerate() {
            sql.push_str(if i == 0 { " " } else { ", " });
            push_row(&mut sql, backend, i * COLUMNS, &[0; COLUMNS]);
            values.extend(invitation_values(row));
        }
        sql.push_str(" ON CONFLICT (dedupe_key) DO NOTHING RETURNING id");
        let stmt = Statement::from_sql_and_values(backend, sql, values);
        for row in db.query_all_raw(stmt).await? {
            inserted.insert(row.try_get_by_index::<String>(0)?);
        }
    }
    Ok(inserted)
}

/// Appends `(p, p, …)` for one row of a multi-row INSERT: a placeholder per entry
/// of `literal_zero_before` (which puts that many literal `0` columns before it),
/// numbered from `bound + 1` on PostgreSQL. SQLite gets anonymous `?`: sqlx looks
/// every numbered parameter's name up, and SQLite finds each name by a linear search
/// (`sqlite3_bind_parameter_name`), so a statement of 900 `$n` cost 6 % of a robot
/// call's instructions in binding alone (issue 19's profile).
fn push_row(sql: &mut String, backend: DbBackend, bound: usize, literal_zero_before: &[usize]) {
    use std::fmt::Write;
    sql.push('(');
    for (c, zeros) in literal_zero_before.iter().enumerate() {
        if c > 0 {
            sql.push_str(", ");
        }
        for _ in 0..*zeros {
            sql.push_str("0, ");
        }
        match backend {
            DbBackend::Sqlite => sql.push('?'),
            _ => {
                let _ = write!(sql, "${}", bound + c + 1);
            }
        }
    }
    sql.push(')');
}

/// Splits `n` items into chunks whose lengths are powers of two, largest first: a
/// multi-row statement's text depends on its row count, and each text is prepared
/// once per connection, so only a handful of texts ever exist (sqlx keeps 100).
pub fn pow2_chunks(n: usize) -> impl Iterator<Item = Range<usize>> {
    let mut start = 0;
    std::iter::from_fn(move || {
        let left = n - start;
        if left == 0 {
            return None;
        }
        let len = 1 << (usize::BITS - 1 - left.leading_zeros());
        let range = start..start + len;
        start += len;
        Some(range)
    })
}

/// A statement's text and values built together: each [`Params::push`] writes the
/// next placeholder (`?` on SQLite, see [`push_row`]; `$n` on PostgreSQL) and keeps
/// its value, so text and values cannot get out of step.
struct Params {
    backend: DbBackend,
    sql: String,
    values: Vec<Value>,
}

impl Params {
    fn new(backend: DbBackend, head: &str) -> Self {
        Params {
            backend,
            sql: head.to_owned(),
            values: Vec::new(),
        }
    }

    fn push(&mut self, value: impl Into<Value>) -> &mut Self {
        use std::fmt::Write;
        self.values.push(value.into());
        match self.backend {
            DbBackend::Sqlite => self.sql.push('?'),
            _ => {
                let _ = write!(self.sql, "${}", self.values.len());
            }
        }
        self
    }

    fn text(&mut self, text: &str) -> &mut Self {
        self.sql.push_str(text);
        self
    }

    /// `CASE id WHEN k THEN v … END WHERE id IN (k, …)` for `pairs`. No ELSE: the
    /// WHERE names the same ids (and PostgreSQL would not match `json` with `jsonb`).
    fn case_where_id<K: Clone + Into<Value>, V: Clone + Into<Value>>(
        &mut self,
        pairs: &[(K, V)],
    ) -> &mut Self {
        self.text("CASE id");
        for (k, v) in pairs {
            self.text(" WHEN ")
                .push(k.clone())
                .text(" THEN ")
                .push(v.clone());
        }
        self.text(" END WHERE id IN (");
        for (i, (k, _)) in pairs.iter().enumerate() {
            if i > 0 {
                self.text(", ");
            }
            self.push(k.clone());
        }
        self.text(")")
    }

    fn statement(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.sql, self.values)
    }
}

/// Stores the names the outbox read from the portal, `(invitation id, name)`, a
/// statement per [`pow2_chunks`] chunk: one name lookup per robot run, written
/// together with the rest of a round's (issue 19).
pub async fn set_patient_names<C: ConnectionTrait>(
    db: &C,
    names: &[(String, String)],
) -> Result<(), DbErr> {
    for range in pow2_chunks(names.len()) {
        let mut p = Params::new(
            db.get_database_backend(),
            "UPDATE invitation SET patient_name = ",
        );
        p.case_where_id(&names[range]);
        db.execute_raw(p.statement()).await?;
    }
    Ok(())
}

/// Records jobs claimed under `lease` (`None`: jobs nobody holds) as done with their results, `(job id,
/// result)`, a statement per [`pow2_chunks`] chunk instead of one per job: a robot
/// run makes three jobs, and each UPDATE is a round trip to SQLite's one writer
/// (issue 19). Fenced on the lease, as `outbox::jobs::finish` fences every outcome
/// (which records a single done job through here).
pub async fn finish_done_jobs<C: ConnectionTrait>(
    db: &C,
    lease: Option<&str>,
    done: &[(i64, serde_json::Value)],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), DbErr> {
    for range in pow2_chunks(done.len()) {
        let mut p = Params::new(
            db.get_database_backend(),
            "UPDATE outbox_job SET locked_until = NULL, lease = NULL, lease_owner = NULL, \
             last_error = NULL, paused = ",
        );
        p.push(false).text(", done_at = ").push(now);
        p.text(", result = ").case_where_id(&done[range]);
        match lease {
            Some(lease) => p.text(" AND lease = ").push(lease.to_owned()),
            None => p.text(" AND lease IS NULL"),
        };
        db.execute_raw(p.statement()).await?;
    }
    Ok(())
}

fn invitation_values(row: &invitation::Model) -> [Value; 15] {
    [
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
    ]
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

/// Queues `jobs`, a statement per [`pow2_chunks`] chunk; a key already queued keeps
/// its job. The text depends only on the number of rows, so it is prepared once per
/// count.
pub async fn insert_jobs<C: ConnectionTrait>(db: &C, mut jobs: Vec<NewJob>) -> Result<(), DbErr> {
    // In order: the outbox runs a portal's jobs in the order of their ids.
    for range in pow2_chunks(jobs.len()).collect::<Vec<_>>() {
        let rest = jobs.split_off(range.len());
        insert_job_rows(db, std::mem::replace(&mut jobs, rest)).await?;
    }
    Ok(())
}

async fn insert_job_rows<C: ConnectionTrait>(db: &C, jobs: Vec<NewJob>) -> Result<(), DbErr> {
    if jobs.is_empty() {
        return Ok(());
    }
    const COLUMNS: usize = 6;
    let backend = db.get_database_backend();
    let mut sql = String::from(
        "INSERT INTO outbox_job (portal_id, kind, payload, idempotency_key, attempts, run_at, created_at) VALUES ",
    );
    let mut values = Vec::with_capacity(jobs.len() * COLUMNS);
    for (i, job) in jobs.into_iter().enumerate() {
        let n = i * COLUMNS;
        if i > 0 {
            sql.push_str(", ");
        }
        // `attempts` is the literal 0 between the key and `run_at`.
        push_row(&mut sql, backend, n, &[0, 0, 0, 0, 1, 0]);
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

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn chunks_are_powers_of_two_covering_every_item_once_in_order() {
        for n in 0..200 {
            let chunks: Vec<Range<usize>> = pow2_chunks(n).collect();
            let mut next = 0;
            for c in &chunks {
                assert_eq!(c.start, next, "n = {n}: {chunks:?}");
                assert!(c.len().is_power_of_two(), "n = {n}: {chunks:?}");
                next = c.end;
            }
            assert_eq!(next, n, "n = {n}: {chunks:?}");
            assert_eq!(chunks.len(), n.count_ones() as usize, "n = {n}");
        }
    }
}
