//! Database connection, migrations and the small key-value helpers.

pub mod checkpoint;
pub mod entities;
pub mod group_commit;
pub mod portal_cache;
pub mod prepared;
pub mod rate_bucket;

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ActiveValue::Set, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr,
    EntityTrait, sea_query::OnConflict,
};

use entities::{audit_event, setting};

/// Connects to SQLite (creating the file and its directory) or PostgreSQL.
/// SQLite runs in WAL mode with a busy timeout so the worker and requests do not
/// trip over each other's writes.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    if let Some(path) = sqlite_file_path(url)
        && let Some(dir) = std::path::Path::new(&path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            DbErr::Custom(format!("не удалось создать каталог {}: {e}", dir.display()))
        })?;
    }
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10));
    if url.starts_with("sqlite:") {
        // Every connection to `:memory:` is a database of its own: keep exactly one.
        let pool = if url.contains(":memory:") || url.contains("mode=memory") {
            1
        } else {
            8
        };
        opts.max_connections(pool).min_connections(1);
        // Readers look up a few rows by key (the robot's portal and questionnaires
        // are kept in memory): 1 MiB of pages each rather than SQLite's 2, which
        // kept eight readers' copies of the same hot pages (issue 19's memory).
        opts.map_sqlx_sqlite_opts(|o| sqlite_options(o).pragma("cache_size", "-1024"));
    } else {
        opts.max_connections(16);
    }
    Database::connect(opts).await
}

fn sqlite_options(o: SqliteConnectOptions) -> SqliteConnectOptions {
    o.journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        .create_if_missing(true)
        // Statement journals (a multi-row INSERT or UPDATE inside a transaction keeps
        // the pages it changes, to undo just that statement) stay in memory: past
        // 64 KiB SQLite spilled them to a temporary file, opened and written on
        // every batch (issue 19's profile: 8 % of the robot path's time).
        .pragma("temp_store", "memory")
        // Checkpoints run beside the writer (`checkpoint`); a commit checkpoints
        // itself, with the write turn held, only past this.
        .pragma("wal_autocheckpoint", checkpoint::WRITER_PAGES.to_string())
        .pragma("journal_size_limit", checkpoint::WAL_BYTES.to_string())
}

/// A SQLite file's writer: one connection of its own for the writes this process
/// takes turns for (`AppState::begin_write`, the group commit, the outbox's claim);
/// `None` on PostgreSQL and for an in-memory database (a second connection would
/// open another database). SQLite empties a connection's page cache whenever
/// another connection has written since its last transaction, so writes spread
/// over the pool read their pages back from the file at almost every commit (a
/// quarter of the robot path's time in `pread` under load, issue 19); a connection
/// that does nearly all the writing keeps its cache, here 8 MiB for the indexes a
/// burst inserts into.
pub async fn connect_writer(url: &str) -> Result<Option<DatabaseConnection>, DbErr> {
    if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(None);
    }
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .max_connections(1)
        .min_connections(1)
        .map_sqlx_sqlite_opts(|o| sqlite_options(o).pragma("cache_size", "-8192"));
    Database::connect(opts).await.map(Some)
}

pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

/// The unambiguous letters ids are made of, in ASCII order, so that ids compare as
/// the numbers they spell.
const ID_ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjkmnpqrstuvwxyz";

/// A random id of 12 characters from an unambiguous alphabet (~70 bits): outbox
/// leases, a worker's identity when it has no `host:port`, the tail of
/// [`ordered_id`].
pub fn random_id() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..12)
        .map(|_| ID_ALPHABET[rng.gen_range(0..ID_ALPHABET.len())] as char)
        .collect()
}

/// A key that new rows append to their index with: 8 characters spelling the
/// milliseconds since 1970 (in order until the year 4600), then [`random_id`].
/// A random key lands on a random page of its unique index, and every commit wrote
/// each such page out whole again: with invitation ids and the keys of their jobs
/// (a run that never reuses a link) made this way a robot call's commit wrote two
/// pages fewer, and the robot bench went from 6 170 to 7 330 calls/s (issue 19).
/// The random tail keeps the id as hard to guess as before; the time it shows is
/// when the row was written, within moments of the invitation's `created_at`.
pub fn ordered_id() -> String {
    ordered_id_at(chrono::Utc::now().timestamp_millis())
}

fn ordered_id_at(millis: i64) -> String {
    let base = ID_ALPHABET.len() as u64;
    let mut rest = u64::try_from(millis).unwrap_or(0);
    let mut time = [0u8; 8];
    for c in time.iter_mut().rev() {
        *c = ID_ALPHABET[(rest % base) as usize];
        rest /= base;
    }
    let mut id = String::from_utf8_lossy(&time).into_owned();
    id.push_str(&random_id());
    id
}

/// Database reachable: a trivial query, for `/healthz`.
pub async fn ping(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.execute_unprepared("SELECT 1").await.map(|_| ())
}

fn sqlite_file_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| path.to_owned())
}

pub async fn get_setting<C: ConnectionTrait>(db: &C, key: &str) -> Result<Option<String>, DbErr> {
    Ok(setting::Entity::find_by_id(key.to_owned())
        .one(db)
        .await?
        .map(|s| s.value))
}

pub async fn put_setting<C: ConnectionTrait>(db: &C, key: &str, value: &str) -> Result<(), DbErr> {
    setting::Entity::insert(setting::ActiveModel {
        key: Set(key.to_owned()),
        value: Set(value.to_owned()),
    })
    .on_conflict(
        OnConflict::column(setting::Column::Key)
            .update_column(setting::Column::Value)
            .to_owned(),
    )
    .exec(db)
    .await
    .map(|_| ())
}

/// Inserts a setting only if it is absent and returns the value that won, so that
/// two instances starting together agree on one generated secret.
pub async fn setting_or_insert<C: ConnectionTrait>(
    db: &C,
    key: &str,
    value: &str,
) -> Result<String, DbErr> {
    let inserted = setting::Entity::insert(setting::ActiveModel {
        key: Set(key.to_owned()),
        value: Set(value.to_owned()),
    })
    .on_conflict(
        OnConflict::column(setting::Column::Key)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    if inserted == 1 {
        return Ok(value.to_owned());
    }
    get_setting(db, key)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(key.to_owned()))
}

/// Records who did what. Never medical content: ids and actions only.
pub async fn audit<C: ConnectionTrait>(
    db: &C,
    portal_id: Option<i64>,
    actor: &str,
    action: &str,
    subject: Option<&str>,
) -> Result<(), DbErr> {
    audit_event::Entity::insert(audit_event::ActiveModel {
        at: Set(chrono::Utc::now()),
        portal_id: Set(portal_id),
        actor: Set(actor.chars().take(128).collect()),
        action: Set(action.to_owned()),
        subject: Set(subject.map(|s| s.chars().take(255).collect())),
        ..Default::default()
    })
    .exec_without_returning(db)
    .await
    .map(|_| ())
}

/// SQLite's plan for a statement, one line per step of the plan.
#[cfg(test)]
pub(crate) async fn query_plan(db: &DatabaseConnection, statement: sea_orm::Statement) -> String {
    let explain = sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Sqlite,
        format!("EXPLAIN QUERY PLAN {}", statement.sql),
        statement.values.map(|v| v.0).unwrap_or_default(),
    );
    let rows = db.query_all_raw(explain).await.expect("explained");
    rows.iter()
        .map(|r| r.try_get_by_index::<String>(3).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_file_path("sqlite://data/opros.db?mode=rwc").as_deref(),
            Some("data/opros.db")
        );
        assert_eq!(sqlite_file_path("sqlite::memory:"), None);
        assert_eq!(sqlite_file_path("postgres://x/y"), None);
    }

    #[test]
    fn ordered_ids_sort_as_their_times_and_keep_a_random_tail() {
        // A millisecond apart, a digit rolling over, a day, a century apart.
        let times: [i64; 5] = [
            1_796_000_000_000,
            1_796_000_000_001,
            1_796_000_000_055,
            1_796_086_400_000,
            4_950_000_000_000,
        ];
        let ids: Vec<String> = times.iter().map(|&t| ordered_id_at(t)).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
        for id in &ids {
            assert_eq!(id.len(), 20, "{id}");
            assert!(id.bytes().all(|b| ID_ALPHABET.contains(&b)), "{id}");
        }
        // The same millisecond: the same prefix, a different random tail.
        let (a, b) = (ordered_id_at(times[0]), ordered_id_at(times[0]));
        assert_eq!(a[..8], b[..8]);
        assert_ne!(a[8..], b[8..]);
        assert!(ordered_id() > ids[0] && ordered_id() < ids[4]);
    }
}
