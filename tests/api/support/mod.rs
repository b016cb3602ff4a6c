//! Test support: the service on 127.0.0.1:0 with a fresh database and configuration
//! built in code, driven over real HTTP.

pub mod db;
pub mod html;
pub mod logs;
pub mod portal;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use opros::outbox::Outbox;
use opros::{AppState, Application, Config};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Prints a SKIP line; with `OPROS_STRICT_SKIPS=1` (CI) a skip is a failure.
pub fn skip(test: &str, why: &str) {
    if std::env::var("OPROS_STRICT_SKIPS").is_ok_and(|v| v == "1") {
        panic!("{test} would be skipped ({why}), and OPROS_STRICT_SKIPS=1 forbids skips");
    }
    eprintln!("SKIP {test}: {why}");
}

pub struct TestApp {
    pub base: String,
    pub state: AppState,
    pub http: reqwest::Client,
    cancel: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
    pub db_url: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Runs due outbox jobs now and waits for those the background worker holds, until
    /// no job is due or in flight (retries scheduled for later are left).
    pub async fn run_outbox(&self) {
        use opros::db::entities::outbox_job;
        use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            Outbox::new(self.state.clone()).run_until_idle().await;
            let now = chrono::Utc::now().timestamp_millis();
            let busy = outbox_job::Entity::find()
                .filter(outbox_job::Column::DoneAt.is_null())
                .filter(outbox_job::Column::DeadAt.is_null())
                .filter(outbox_job::Column::RunAt.lte(now))
                .count(&self.state.db)
                .await
                .expect("count jobs");
            if busy == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the outbox still has {busy} due jobs after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> (u16, Value) {
        let r = self
            .http
            .request(method, self.url(path))
            .json(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Stops the server and the worker, as a process shutdown would.
    pub async fn stop(mut self) -> String {
        self.cancel.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        self.db_url.clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The service on a free port with the given variables (DATABASE_URL defaults to a
/// fresh SQLite file; PUBLIC_URL to the service's own address).
pub async fn spawn_app(pairs: &[(&str, &str)]) -> TestApp {
    spawn_app_on(&db::sqlite_for_process(), pairs).await
}

pub async fn spawn_app_on(db_url: &str, pairs: &[(&str, &str)]) -> TestApp {
    spawn_app_tuned(db_url, pairs, |_| {}).await
}

/// [`spawn_app_on`] with settings that have no variable (connection limits).
pub async fn spawn_app_tuned(
    db_url: &str,
    pairs: &[(&str, &str)],
    tune: impl FnOnce(&mut Config),
) -> TestApp {
    let mut map = vars(pairs);
    map.entry("DATABASE_URL".into())
        .or_insert_with(|| db_url.to_owned());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    map.insert("PORT".into(), port.to_string());
    map.entry("PUBLIC_URL".into())
        .or_insert_with(|| format!("http://127.0.0.1:{port}"));
    let mut config = Config::from_map(&map).expect("test configuration is valid");
    tune(&mut config);
    let listen = config.listen;
    let state = AppState::build(config).await.expect("state");
    let app = Application::with_state(state.clone(), listen)
        .await
        .expect("bind");
    let base = format!("http://{}", app.addr());
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let handle = tokio::spawn(async move {
        let _ = app.run_until_stopped(c).await;
    });
    TestApp {
        base,
        state,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        cancel,
        handle: Some(handle),
        db_url: db_url.to_owned(),
    }
}

/// Polls until `ok` holds, failing after 10 s. No fixed sleeps in tests.
pub async fn eventually<F, Fut>(what: &str, ok: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(Duration::from_secs(10), what, ok).await;
}

/// [`eventually`] with a deadline of its own, for what waits on a refilling budget.
pub async fn eventually_within<F, Fut>(limit: Duration, what: &str, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Submits a survey through the patient API at `base` (the service's address), as the
/// page's script does: reads the questionnaire, then posts what `answers` makes of it.
/// Returns the submit's status and body.
pub async fn submit_through_api(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    answers: impl Fn(&Value) -> Value,
) -> (reqwest::StatusCode, String) {
    opros::testing::submit_through_api(http, base, token, answers)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub use opros::testing::full_answers;
