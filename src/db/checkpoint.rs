//! WAL checkpoints beside the writer. SQLite copies the WAL back into the database
//! when a commit finds it past `wal_autocheckpoint` pages, inside that commit, on the
//! one writer connection and with this process's write turn held: every robot call
//! queued behind it waits (issue 19's profile: 11 % of the robot path's time, all on
//! the writer's thread). Here a reading connection copies what is committed every
//! [`EVERY`], on a thread of its own, while the writer goes on. Once a checkpoint has
//! copied everything, the next commit starts the WAL over. Under a load that keeps
//! the writer busy that moment is rare, and the commits' own checkpoint, at
//! [`WRITER_PAGES`] (every connection's `wal_autocheckpoint`), bounds the WAL
//! (~18 MB in the robot bench) and then has little left to copy.
//!
//! `PASSIVE` never waits for readers or the writer and never blocks them. Every
//! checkpoint fsyncs the WAL before copying, so a commit is safe from a power loss
//! within about [`EVERY`] under load (the writer's fallback bounds it otherwise).

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection};
use tokio_util::sync::CancellationToken;

/// How often committed pages are copied back: a burst's commits add some 4 MiB to
/// the WAL in that time.
pub const EVERY: Duration = Duration::from_millis(20);

/// A commit's own checkpoint, in pages of the WAL (SQLite's default is 1 000).
pub const WRITER_PAGES: u32 = 4_000;

/// Checkpoints through `db` (a SQLite file's reading pool) until `cancel` fires.
pub async fn run(db: DatabaseConnection, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        if let Err(e) = db
            .execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
            .await
        {
            tracing::warn!(error = %e, "Не удалось перенести журнал SQLite в базу");
        }
    }
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

    #[tokio::test]
    async fn committed_pages_reach_the_database_file_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("opros.db");
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let readers = crate::db::connect(&url).await.expect("pool");
        crate::db::migrate(&readers).await.expect("migrated");
        let writer = crate::db::connect_writer(&url)
            .await
            .expect("writer")
            .expect("a file has a writer");
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
        let task = tokio::spawn(run(readers.clone(), cancel.clone()));
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
}
