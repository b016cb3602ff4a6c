//! Databases for tests: a fresh SQLite file per test, and a fresh PostgreSQL database
//! per test when `OPROS_TEST_POSTGRES_URL` names a server. PostgreSQL tests are
//! `#[ignore]`d with the reason, so `cargo test` counts and names them; run with
//! `--include-ignored` (as CI does) they print SKIP without a server, and with
//! `OPROS_STRICT_SKIPS=1` a skip fails.

use std::path::PathBuf;

use sea_orm::{ConnectionTrait, Database};

pub struct TestDb {
    pub url: String,
    pub backend: &'static str,
    _dir: Option<tempfile::TempDir>,
    /// For PostgreSQL: the server's admin URL and this database's name, dropped with
    /// the test so that a long run does not fill the server's disk.
    pg: Option<(String, String)>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.pg.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on; a thread
        // of its own with its own runtime does the dropping. `WITH (FORCE)` ends the
        // connections the finished test's pool may still hold.
        let dropping = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let admin = Database::connect(admin_url).await.ok()?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()?;
                admin.close().await.ok()
            })
        });
        let _ = dropping.join();
    }
}

pub fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let path: PathBuf = dir.path().join("opros.db");
    TestDb {
        url: format!("sqlite://{}?mode=rwc", path.display()),
        backend: "sqlite",
        _dir: Some(dir),
        pg: None,
    }
}

/// A fresh SQLite file whose directory lives as long as the test process.
pub fn sqlite_for_process() -> String {
    let db = sqlite();
    let url = db.url.clone();
    std::mem::forget(db);
    url
}

/// A new, empty PostgreSQL database, or `None` (with a SKIP line) when no server is
/// configured.
pub async fn postgres(test: &str) -> Option<TestDb> {
    let Ok(admin_url) = std::env::var("OPROS_TEST_POSTGRES_URL") else {
        crate::support::skip(
            test,
            "PostgreSQL leg: OPROS_TEST_POSTGRES_URL is not set (.ci/run starts a server and sets it)",
        );
        return None;
    };
    let name = format!("opros_test_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(admin_url.clone())
        .await
        .expect("connect to OPROS_TEST_POSTGRES_URL");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    let mut url = url::Url::parse(&admin_url).expect("OPROS_TEST_POSTGRES_URL is a URL");
    url.set_path(&format!("/{name}"));
    Some(TestDb {
        url: url.to_string(),
        backend: "postgres",
        _dir: None,
        pg: Some((admin_url, name)),
    })
}

/// Declares a module named `$name` holding two tests of the `async fn $name(TestDb)`
/// beside it: `sqlite`, always run, and `postgres`, ignored with its reason so that
/// `cargo test` lists it instead of passing it silently; `.ci/run` runs it with
/// `--include-ignored` against its own server.
macro_rules! on_both_databases {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(crate::support::db::sqlite()).await;
            }

            #[tokio::test]
            #[ignore = "needs OPROS_TEST_POSTGRES_URL (see README)"]
            async fn postgres() {
                if let Some(db) = crate::support::db::postgres(module_path!()).await {
                    super::$name(db).await;
                }
            }
        }
    };
}
pub(crate) use on_both_databases;
