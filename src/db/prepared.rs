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
use serde_json::value::RawValue;

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
    let stmt = Statement::from_sql_and_values(
        db.get_database_backend(),
        INSERT_INVITATION,
        invitation_values(row),
    );
    Ok(db.execute_raw(stmt).await?.rows_affected() > 0)
}

/// Inserts `rows`, each unless its `dedupe_key` is taken (by a stored row or an
/// earlier one of `rows`), in one statement; returns the ids of the rows inserted.
pub async fn insert_invitations<C: ConnectionTrait>(
    db: &C,
    rows: &[invitation::Model],
) -> Result<HashSet<String>, DbErr> {
    let mut inserted = HashSet::with_capacity(rows.len());
    if rows.is_empty() {
        return Ok(inserted);
    }
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Sqlite => INSERT_INVITATIONS_SQLITE,
        _ => INSERT_INVITATIONS_POSTGRES,
    };
    let json = json_rows(
        backend,
        &INVITATION_COLUMNS,
        rows.iter().map(|r| invitation_values(r).map(Cell::from)),
    )?;
    let stmt = Statement::from_sql_and_values(backend, sql, [json]);
    for row in db.query_all_raw(stmt).await? {
        inserted.insert(row.try_get_by_index::<String>(0)?);
    }
    Ok(inserted)
}

const INVITATION_COLUMNS: [&str; 15] = [
    "id",
    "portal_id",
    "channel",
    "entity_type",
    "entity_id",
    "patient_name",
    "questionnaire_code",
    "questionnaire_version",
    "status",
    "dedupe_key",
    "created_at",
    "opened_at",
    "completed_at",
    "expires_at",
    "questionnaire_version_id",
];

/// The text of [`INSERT_INVITATIONS_SQLITE`], for [`COMMIT_NEW_INVITATIONS`] too:
/// the rows in parameter `$rows`, `$tail` at the end. `jsonb_each` parses the array
/// once and hands each row on as JSONB, which `->>` reads without parsing it again
/// (`json_each` hands on text: a profile put 17 % of the writer's time in parsing it
/// over and over).
macro_rules! insert_invitations_sqlite {
    ($rows:literal, $tail:literal) => {
        concat!(
            "INSERT INTO invitation (id, portal_id, channel, \
     entity_type, entity_id, patient_name, questionnaire_code, questionnaire_version, status, \
     dedupe_key, created_at, opened_at, completed_at, expires_at, questionnaire_version_id) \
     SELECT value->>'id', value->>'portal_id', value->>'channel', value->>'entity_type', \
     value->>'entity_id', value->>'patient_name', value->>'questionnaire_code', \
     value->>'questionnaire_version', value->>'status', value->>'dedupe_key', \
     value->>'created_at', value->>'opened_at', value->>'completed_at', value->>'expires_at', \
     value->>'questionnaire_version_id' FROM jsonb_each(",
            $rows,
            ") WHERE true ORDER BY key",
            $tail
        )
    };
}

const INSERT_INVITATIONS_SQLITE: &str =
    insert_invitations_sqlite!("?", " ON CONFLICT (dedupe_key) DO NOTHING RETURNING id");

const INSERT_INVITATIONS_POSTGRES: &str = "INSERT INTO invitation (id, portal_id, channel, \
     entity_type, entity_id, patient_name, questionnaire_code, questionnaire_version, status, \
     dedupe_key, created_at, opened_at, completed_at, expires_at, questionnaire_version_id) \
     SELECT r.id, r.portal_id, r.channel, r.entity_type, r.entity_id, r.patient_name, \
     r.questionnaire_code, r.questionnaire_version, r.status, r.dedupe_key, r.created_at, \
     r.opened_at, r.completed_at, r.expires_at, r.questionnaire_version_id \
     FROM json_populate_recordset(NULL::invitation, $1::json) WITH ORDINALITY AS r \
     ORDER BY r.ordinality ON CONFLICT (dedupe_key) DO NOTHING RETURNING id";

/// Rows for a statement that takes them all as one parameter, a JSON array of
/// objects keyed by column (SQLite reads them with `jsonb_each`, PostgreSQL with
/// `json_populate_recordset`): the statement's text stays the same for any number
/// of rows, so it is prepared once, and a batch is one round trip to the database,
/// where rows bound one value each took a statement per power-of-two chunk (issue
/// 19). Each value is written as the driver would bind it, so a row stored this way
/// reads back as one inserted by sea-orm (the storage tests compare). The text is
/// written straight out: built as a tree of `serde_json` values first, it cost a
/// robot call ~75 000 instructions, 7 % of all it took (issue 19's profile).
fn json_rows<const N: usize>(
    backend: DbBackend,
    columns: &[&str; N],
    rows: impl Iterator<Item = [Cell; N]>,
) -> Result<Value, DbErr> {
    let mut out = Vec::with_capacity(1024);
    let mut times = TimeText::default();
    out.push(b'[');
    for (i, row) in rows.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'{');
        for (k, (column, cell)) in columns.iter().zip(row).enumerate() {
            if k > 0 {
                out.push(b',');
            }
            write_json(&mut out, column)?;
            out.push(b':');
            write_cell(&mut out, &mut times, backend, column, cell)?;
        }
        out.push(b'}');
    }
    out.push(b']');
    String::from_utf8(out)
        .map(Value::from)
        .map_err(|e| DbErr::Custom(e.to_string()))
}

/// A value of a row for [`json_rows`]: one the driver would bind, or JSON stored as
/// its text (an outbox job's payload, serialised once from its job; `RawValue` holds
/// only valid JSON, which PostgreSQL's rows take in as it is).
enum Cell {
    Bound(Value),
    Json(Box<RawValue>),
}

impl From<Value> for Cell {
    fn from(value: Value) -> Self {
        Cell::Bound(value)
    }
}

fn write_json(out: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) -> Result<(), DbErr> {
    serde_json::to_writer(out, value).map_err(|e| DbErr::Custom(e.to_string()))
}

/// The text of the time written last: a batch's rows mostly share their times (its
/// jobs are all queued at one instant), and chrono's formatting is the costliest
/// part of a row.
#[derive(Default)]
struct TimeText {
    last: Option<chrono::DateTime<chrono::Utc>>,
    text: String,
}

impl TimeText {
    fn of(&mut self, t: chrono::DateTime<chrono::Utc>) -> &str {
        if self.last != Some(t) {
            self.text = t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
            self.last = Some(t);
        }
        &self.text
    }
}

fn write_cell(
    out: &mut Vec<u8>,
    times: &mut TimeText,
    backend: DbBackend,
    column: &str,
    cell: Cell,
) -> Result<(), DbErr> {
    let value = match cell {
        // SQLite keeps JSON as its text; PostgreSQL's `json` column takes the value
        // itself.
        Cell::Json(json) => {
            return match backend {
                DbBackend::Sqlite => write_json(out, json.get()),
                _ => {
                    out.extend_from_slice(json.get().as_bytes());
                    Ok(())
                }
            };
        }
        Cell::Bound(value) => value,
    };
    match value {
        Value::Bool(Some(b)) => out.push(if b { b'1' } else { b'0' }),
        Value::Int(Some(v)) => write_json(out, &v)?,
        Value::BigInt(Some(v)) => write_json(out, &v)?,
        Value::String(Some(v)) => write_json(out, &v)?,
        // sqlx binds a time as RFC 3339 text on SQLite, and as whole
        // microseconds on PostgreSQL, whose parser would round the rest.
        Value::ChronoDateTimeUtc(Some(t)) => {
            let t = match backend {
                DbBackend::Sqlite => t,
                _ => chrono::SubsecRound::trunc_subsecs(t, 6),
            };
            write_json(out, times.of(t))?;
        }
        Value::Json(Some(j)) => match backend {
            DbBackend::Sqlite => write_json(out, &j.to_string())?,
            _ => write_json(out, &j)?,
        },
        Value::Bool(None)
        | Value::Int(None)
        | Value::BigInt(None)
        | Value::String(None)
        | Value::ChronoDateTimeUtc(None)
        | Value::Json(None) => out.extend_from_slice(b"null"),
        other => {
            return Err(DbErr::Custom(format!(
                "столбец {column}: значение {other:?} не переводится в JSON"
            )));
        }
    }
    Ok(())
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
/// next placeholder and keeps its value, so text and values cannot get out of step.
/// SQLite gets anonymous `?`: sqlx looks every numbered parameter's name up, and
/// SQLite finds each by a linear search. PostgreSQL gets `$n`.
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

/// Records jobs claimed under `lease` (`None`: jobs nobody holds) as done with their
/// results, `(job id, result)`, a statement per [`pow2_chunks`] chunk instead of one
/// per job: a robot run makes three jobs, and each UPDATE is a round trip to
/// SQLite's one writer (issue 19). Fenced on the lease, as `outbox::jobs::finish`
/// fences every outcome (which records a single done job through here).
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
    /// The job as JSON: its fields in their declared order, where sea-orm's insert
    /// of a `serde_json::Value` stores the keys sorted; both read back the same.
    pub payload: Box<RawValue>,
    pub idempotency_key: String,
    pub run_at: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Queues `jobs` in one statement (see [`json_rows`]); a key already queued keeps
/// its job.
pub async fn insert_jobs<C: ConnectionTrait>(db: &C, jobs: Vec<NewJob>) -> Result<(), DbErr> {
    if jobs.is_empty() {
        return Ok(());
    }
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Sqlite => INSERT_JOBS_SQLITE,
        _ => INSERT_JOBS_POSTGRES,
    };
    let json = json_rows(backend, &JOB_COLUMNS, jobs.into_iter().map(job_values))?;
    db.execute_raw(Statement::from_sql_and_values(backend, sql, [json]))
        .await
        .map(|_| ())
}

const JOB_COLUMNS: [&str; 6] = [
    "portal_id",
    "kind",
    "payload",
    "idempotency_key",
    "run_at",
    "created_at",
];

fn job_values(job: NewJob) -> [Cell; 6] {
    [
        Value::from(job.portal_id).into(),
        Value::from(job.kind).into(),
        Cell::Json(job.payload),
        Value::from(job.idempotency_key).into(),
        Value::from(job.run_at).into(),
        Value::from(job.created_at).into(),
    ]
}

/// The text of [`INSERT_JOBS_SQLITE`], for [`COMMIT_NEW_INVITATIONS`] too: the rows
/// in parameter `$rows` (as `j`), kept where `$keep` holds. In order (`ORDER BY`):
/// the outbox runs a portal's jobs in the order of their ids. `attempts` starts at 0.
macro_rules! insert_jobs_sqlite {
    ($rows:literal, $keep:literal) => {
        concat!(
            "INSERT INTO outbox_job (portal_id, kind, payload, idempotency_key, attempts, \
     run_at, created_at) SELECT j.value->>'portal_id', j.value->>'kind', \
     j.value->>'payload', j.value->>'idempotency_key', 0, j.value->>'run_at', \
     j.value->>'created_at' FROM jsonb_each(",
            $rows,
            ") AS j WHERE ",
            $keep,
            " ORDER BY j.key ON CONFLICT (idempotency_key) DO NOTHING"
        )
    };
}

const INSERT_JOBS_SQLITE: &str = insert_jobs_sqlite!("?", "true");

const INSERT_JOBS_POSTGRES: &str = "INSERT INTO outbox_job (portal_id, kind, payload, \
     idempotency_key, attempts, run_at, created_at) SELECT r.portal_id, r.kind, r.payload, \
     r.idempotency_key, 0, r.run_at, r.created_at \
     FROM json_populate_recordset(NULL::outbox_job, $1::json) WITH ORDINALITY AS r \
     ORDER BY r.ordinality ON CONFLICT (idempotency_key) DO NOTHING";

/// One new invitation's outbox row for [`commit_new_invitations`]: stored only if
/// the invitation `invitation` was.
pub struct JobOfNew {
    pub invitation: String,
    pub job: NewJob,
}

/// SQLite only: stores `rows` as [`insert_invitations`] does, then the jobs and the
/// wakes (`(invitation id, range of keys)`: the `kind` jobs whose keys are in it are made
/// due at `now`) of the invitations that were inserted, and commits; all in one
/// statement list, so the writer's thread is called once for the whole transaction
/// where each statement was a call of its own (issue 19: under load a call waited
/// 0.2–0.4 ms for the threads to be scheduled; ~32 robot calls' links took
/// 2.4–3.4 ms this way against 4.5–5.4 ms as six calls). The list ends by reading the ids
/// that are not stored, usually none: rows handed back one by one cost the writer's
/// thread a wake-up each. Returns the ids inserted; a row whose key was taken is
/// left to the caller, with no job or wake of its own stored. Rolls back whatever an
/// error interrupted. Must run to its end (the group commit runs it on a task of its
/// own): dropped halfway, it would leave the writer inside a transaction sqlx does
/// not know of.
pub async fn commit_new_invitations(
    db: &sea_orm::DatabaseConnection,
    rows: &[invitation::Model],
    jobs: Vec<JobOfNew>,
    wakes: &[(String, std::ops::Range<String>)],
    kind: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<HashSet<String>, DbErr> {
    let backend = DbBackend::Sqlite;
    let invitations = json_rows(
        backend,
        &INVITATION_COLUMNS,
        rows.iter().map(|r| invitation_values(r).map(Cell::from)),
    )?;
    let jobs = json_rows(
        backend,
        &JOB_OF_NEW_COLUMNS,
        jobs.into_iter().map(|j| {
            let [portal, kind, payload, key, run_at, created_at] = job_values(j.job);
            [
                Value::from(j.invitation).into(),
                portal,
                kind,
                payload,
                key,
                run_at,
                created_at,
            ]
        }),
    )?;
    let wakes = json_rows(
        backend,
        &["invitation", "start", "end"],
        wakes.iter().map(|(inv, keys)| {
            [
                Value::from(inv.as_str()).into(),
                Value::from(keys.start.as_str()).into(),
                Value::from(keys.end.as_str()).into(),
            ]
        }),
    )?;
    let stmt = Statement::from_sql_and_values(
        backend,
        COMMIT_NEW_INVITATIONS,
        [
            invitations,
            jobs,
            now.timestamp_millis().into(),
            kind.into(),
            wakes,
        ],
    );
    match db.query_all_raw(stmt).await {
        Ok(missing) => {
            // Committed: no error may be reported from here on, it would have the
            // rows written again. `->>` of a JSON string is always text.
            let missing: HashSet<String> = missing
                .iter()
                .filter_map(|row| row.try_get_by_index::<String>(0).ok())
                .collect();
            Ok(rows
                .iter()
                .filter(|r| !missing.contains(&r.id))
                .map(|r| r.id.clone())
                .collect())
        }
        Err(e) => {
            // The list stops at the failing statement, inside the transaction (or
            // before it began: then there is nothing to roll back).
            let _ = db.execute_unprepared("ROLLBACK").await;
            Err(e)
        }
    }
}

/// [`JOB_COLUMNS`] after the job's invitation.
const JOB_OF_NEW_COLUMNS: [&str; 7] = {
    let mut columns = ["invitation"; 7];
    let mut i = 0;
    while i < JOB_COLUMNS.len() {
        columns[i + 1] = JOB_COLUMNS[i];
        i += 1;
    }
    columns
};

/// A job or a wake counts only if its invitation is stored: inserted just before,
/// in the same transaction (a clash of ids would end the list with an error, as the
/// only conflict let pass is the dedupe key's). The wake repeats
/// `outbox::survey_wait::due_under`'s conditions, and finds the waits by a
/// search of the keys' index per document (`+kind` keeps the planner off the index
/// by kind, whose walk read every open wait of every portal at every commit). The
/// parameters are numbered:
/// SQLite gives a statement that uses `?2` alone a nameless first slot, which sqlx
/// binds with a spare value, so no number here may exceed the values given.
const COMMIT_NEW_INVITATIONS: &str = concat!(
    "BEGIN IMMEDIATE; ",
    insert_invitations_sqlite!("?1", " ON CONFLICT (dedupe_key) DO NOTHING"),
    "; ",
    insert_jobs_sqlite!(
        "?2",
        "EXISTS (SELECT 1 FROM invitation AS i WHERE i.id = j.value->>'invitation')"
    ),
    "; UPDATE outbox_job SET run_at = ?3 WHERE id IN (SELECT o.id FROM jsonb_each(?5) AS w \
     JOIN outbox_job AS o ON o.idempotency_key >= w.value->>'start' \
     AND o.idempotency_key < w.value->>'end' \
     WHERE +o.kind = ?4 AND o.done_at IS NULL AND o.dead_at IS NULL \
     AND EXISTS (SELECT 1 FROM invitation AS i WHERE i.id = w.value->>'invitation')); \
     SELECT r.value->>'id' FROM jsonb_each(?1) AS r \
     WHERE NOT EXISTS (SELECT 1 FROM invitation AS i WHERE i.id = r.value->>'id'); \
     COMMIT"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The wake of a new link's waits searches the keys' index, one range per
    /// document: the index by kind, walked before, read every open wait of every
    /// portal at every commit. Plans are fixed for a schema, so this guards the
    /// figures without timing anything.
    #[tokio::test]
    async fn a_new_links_wake_searches_its_documents_keys_only() {
        let db = crate::db::connect("sqlite::memory:").await.expect("db");
        crate::db::migrate(&db).await.expect("migrated");
        let update = COMMIT_NEW_INVITATIONS
            .split("; ")
            .find(|s| s.starts_with("UPDATE"))
            .expect("the wake");
        let values: Vec<sea_orm::Value> = vec![
            "[]".into(),
            "[]".into(),
            0i64.into(),
            "await_survey".into(),
            "[]".into(),
        ];
        let plan = crate::db::query_plan(
            &db,
            Statement::from_sql_and_values(DbBackend::Sqlite, update, values),
        )
        .await;
        assert!(
            plan.contains(
                "SEARCH o USING INDEX sqlite_autoindex_outbox_job_1 (idempotency_key>? AND idempotency_key<?)"
            ),
            "{plan}"
        );
        assert!(!plan.contains("idx_outbox_open_by_kind"), "{plan}");
    }
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
