//! WAL checkpoints beside the writer. SQLite copies the WAL back into the database
//! when a commit finds it past `wal_autocheckpoint` pages, inside that commit, on the
//! one writer connection and with this process's write turn held: every robot call
//! queued behind it waits (issue 19's profile: 11 % of the robot path's time, all on
//! the writer's thread). Here a reading connection copies what is committed every
//! [`EVERY`], on a thread of its own, while the writer goes on. Once a checkpoint has
//! copied everything, the next commit starts the WAL over. Under a load that keeps
//! the writer busy that moment is rare, and the commits' own checkpoint, at
//! [`WRITER_PAGES`] (every connection's `wal_autocheckpoint`), bounds the WAL and
//! then has little left to copy.
//!
//! That commit also makes the database file durable, and the side checkpoints'
//! copies were still in the page cache: its `fsync` wrote 130 ms of them, 5–6 ms
//! with the turn held, and every such commit took 8–15 ms (issue 19: the robot's p99
//! was these commits). So the file is `fsync`ed here after each copy, off the turn,
//! and the commit's own is left with what came since.
//!
//! `PASSIVE` never waits for readers or the writer and never blocks them. Every
//! checkpoint fsyncs the WAL before copying, so a commit is safe from a power loss
//! within about [`EVERY`] under load (the writer's fallback bounds it otherwise).

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, Statement};
use tokio_util::sync::CancellationToken;

/// How often committed pages are copied back: the robot bench's commits add some
/// 2.4 MiB to the WAL in that time.
pub const EVERY: Duration = Duration::from_millis(20);

/// A commit's own checkpoint, in pages of the WAL (SQLite's default is 1 000): with
/// the robot bench's ~30 000 pages a second, once in half a second. At 4 000 (16 MiB)
/// it came every 130 ms, and a commit waiting for it, at ~1.5 % of commits, set the
/// p99 of every call queued behind.
pub const WRITER_PAGES: u32 = 16_000;

/// The WAL file's size kept after it starts over (SQLite's `journal_size_limit`):
/// twice what [`WRITER_PAGES`] frames of 4 KiB pages take, so that a WAL a long
/// reader let grow shrinks again, and one of the usual size is never cut.
pub const WAL_BYTES: u64 = 2 * WRITER_PAGES as u64 * (4096 + 24);

/// Where checkpoints run: a SQLite file's reading pool, and the file, kept open by
/// its owner (see `AppState`: closing a descriptor drops the process's locks).
pub struct Side {
    pub db: DatabaseConnection,
    pub file: Option<Arc<std::fs::File>>,
}

/// Checkpoints through the reading pool until `cancel` fires, and fsyncs the file
/// after a pass that copied pages. The fsync runs beside the next passes, so that
/// they keep their pace (and the WAL its fsync every [`EVERY`]).
pub async fn run(side: Side, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut synced = Synced::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        let pass = match passive(&side.db).await {
            Ok(pass) => pass,
            Err(e) => {
                tracing::warn!(error = %e, "Не удалось перенести журнал SQLite в базу");
                continue;
            }
        };
        if let (Some(pass), Some(file)) = (pass, &side.file) {
            synced.after(pass, file).await;
        }
    }
}

/// The file's fsyncs: at most one at a time, none while nothing new was copied.
#[derive(Default)]
struct Synced {
    running: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The WAL's pages in the file at the last fsync (SQLite counts them from the
    /// WAL's start over; an idle database's WAL stays copied).
    copied: i64,
    failing: bool,
}

impl Synced {
    async fn after(&mut self, pass: Pass, file: &Arc<std::fs::File>) {
        if pass.copied <= 0 || pass.copied == self.copied {
            return;
        }
        if self.running.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        if let Some(finished) = self.running.take() {
            self.report(finished.await);
        }
        let file = Arc::clone(file);
        self.running = Some(tokio::task::spawn_blocking(move || file.sync_data()));
        self.copied = pass.copied;
    }

    /// A failing fsync is logged once, until one succeeds again.
    fn report(&mut self, done: Result<std::io::Result<()>, tokio::task::JoinError>) {
        match done {
            Ok(Err(e)) if !self.failing => {
                self.failing = true;
                tracing::warn!(error = %e, "Не удалось записать файл базы SQLite на диск");
            }
            Ok(Ok(())) => self.failing = false,
            _ => {}
        }
    }
}

/// What a checkpoint found: the WAL's pages, and how many of them are in the
/// database file now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pass {
    wal_pages: i64,
    copied: i64,
}

/// One `PASSIVE` checkpoint; `None` when another one was running.
async fn passive(db: &DatabaseConnection) -> Result<Option<Pass>, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            DatabaseBackend::Sqlite,
            "PRAGMA wal_checkpoint(PASSIVE)",
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    // (busy, the WAL's pages, pages of it copied); -1 for both counts when busy.
    let wal_pages: i64 = row.try_get_by_index(1)?;
    let copied: i64 = row.try_get_by_index(2)?;
    Ok((wal_pages >= 0).then_some(Pass { wal_pages, copied }))
}

/// The main database's file, opened for `fsync` (any descriptor of a file syncs its
/// pages): `None` for a database in memory.
pub async fn database_file(db: &DatabaseConnection) -> Result<Option<std::fs::File>, DbErr> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DatabaseBackend::Sqlite,
            "PRAGMA database_list",
        ))
        .await?;
    for row in rows {
        let name: String = row.try_get_by_index(1)?;
        let path: String = row.try_get_by_index(2)?;
        if name == "main" && !path.is_empty() {
            return std::fs::File::open(&path)
                .map(Some)
                .map_err(|e| DbErr::Custom(format!("не удалось открыть файл базы {path}: {e}")));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// The database file alone, as it would be read after losing the WAL: whether
    /// the setting written through the writer has been copied into it.
    async fn in_database_file(file: &std::path::Path, copy: &std::path::Path) -> bool {
        std::fs::copy(file, copy).expect("copied");
        let db = crate::db::connect(&format!("sqlite://{}?mode=ro", copy.display()))
            .await
            .expect("opened");
        let found = crate::db::get_setting(&db, "checkpointed")
            .await
            .ok()
            .flatten();
        db.close().await.ok();
        found.is_some()
    }

    /// A migrated SQLite file in `dir`: its path, its reading pool and its writer.
    async fn file_database(
        dir: &std::path::Path,
    ) -> (std::path::PathBuf, DatabaseConnection, DatabaseConnection) {
        let file = dir.join("opros.db");
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let readers = crate::db::connect(&url).await.expect("pool");
        crate::db::migrate(&readers).await.expect("migrated");
        let writer = crate::db::connect_writer(&url)
            .await
            .expect("writer")
            .expect("a file has a writer");
        (file, readers, writer)
    }

    #[tokio::test]
    async fn committed_pages_reach_the_database_file_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().expect("dir");
        let (file, readers, writer) = file_database(dir.path()).await;
        // Everything so far is copied back, then a commit far below WRITER_PAGES.
        readers
            .execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
            .await
            .expect("truncated");
        crate::db::put_setting(&writer, "checkpointed", "yes")
            .await
            .expect("written");
        let copy = dir.path().join("copy.db");
        assert!(
            !in_database_file(&file, &copy).await,
            "the writer checkpointed on its own"
        );

        let cancel = CancellationToken::new();
        let side = Side {
            db: readers.clone(),
            file: database_file(&readers).await.expect("listed").map(Arc::new),
        };
        let task = tokio::spawn(run(side, cancel.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut copied = false;
        while !copied && Instant::now() < deadline {
            tokio::time::sleep(EVERY).await;
            copied = in_database_file(&file, &copy).await;
        }
        cancel.cancel();
        task.await.expect("stopped");
        assert!(copied, "no checkpoint copied the commit into the database");
    }

    #[tokio::test]
    async fn the_file_synced_is_the_database_itself_and_a_database_in_memory_has_none() {
        use std::os::unix::fs::MetadataExt;

        let dir = tempfile::tempdir().expect("dir");
        let (path, db, _writer) = file_database(dir.path()).await;
        let file = database_file(&db).await.expect("listed").expect("a file");
        let (found, wanted) = (
            file.metadata().expect("found"),
            path.metadata().expect("db"),
        );
        assert_eq!((found.dev(), found.ino()), (wanted.dev(), wanted.ino()));

        let memory = crate::db::connect("sqlite::memory:").await.expect("memory");
        assert!(database_file(&memory).await.expect("listed").is_none());
    }

    #[tokio::test]
    async fn a_checkpoint_reports_the_wal_pages_it_copied() {
        let dir = tempfile::tempdir().expect("dir");
        let (_, readers, writer) = file_database(dir.path()).await;
        crate::db::put_setting(&writer, "copied", "yes")
            .await
            .expect("written");
        let pass = passive(&readers).await.expect("ran").expect("not busy");
        assert!(
            pass.wal_pages > 0 && pass.copied == pass.wal_pages,
            "{pass:?}"
        );
    }

    #[tokio::test]
    async fn the_file_is_synced_once_per_new_copy_and_never_twice_at_once() {
        let dir = tempfile::tempdir().expect("dir");
        let file = Arc::new(std::fs::File::create(dir.path().join("f")).expect("file"));
        let pass = |copied| Pass {
            wal_pages: 100,
            copied,
        };
        let mut synced = Synced::default();
        synced.after(pass(0), &file).await;
        assert!(synced.running.is_none(), "nothing copied, nothing to sync");
        synced.after(pass(40), &file).await;
        let first = synced.running.as_ref().expect("a sync").id();
        synced.after(pass(40), &file).await;
        assert_eq!(synced.running.as_ref().map(|r| r.id()), Some(first));
        while !synced.running.as_ref().is_some_and(|r| r.is_finished()) {
            tokio::task::yield_now().await;
        }
        synced.after(pass(100), &file).await;
        let second = synced.running.as_ref().expect("a sync").id();
        assert_ne!(first, second, "new pages copied, a new sync");
        assert_eq!(synced.copied, 100);
        assert!(!synced.failing);
    }
}
