//! The outbox after a crash, with real processes: the `opros` binary is started as a
//! child process against a fake portal and killed with SIGKILL in the middle of a
//! job. A restarted instance takes its own leases back at once; a surviving instance
//! takes a dead one's over when they lapse; a portal's outage pauses its queue
//! without killing jobs. Each case checks the targets and that nothing
//! reaches the portal twice.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opros::db::entities::outbox_job;
use opros::testing::Fault;
use opros::testing::fake_portal::FakePortal;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::json;

use crate::support::db::{TestDb, postgres, sqlite};
use crate::support::full_answers;
use crate::support::portal::{fake, patient_deal};

/// A call that never answers while the test runs: the service is "in the middle" of it.
const HANG: Duration = Duration::from_secs(3600);
/// The targets, after the portal recovers.
const RESTART_TARGET: Duration = Duration::from_secs(10);
const TAKEOVER_TARGET: Duration = Duration::from_secs(15);

/// `opros serve` as a child process, configured for the fake portal.
struct Service {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Service {
    async fn start(db_url: &str, port: u16, fake: &FakePortal, dir: &Path, name: &str) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_opros"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db_url)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("PUBLIC_URL", format!("http://127.0.0.1:{port}"))
            .env("B24_CLIENT_ID", fake.client_id())
            .env("B24_CLIENT_SECRET", fake.client_secret())
            .env("B24_OAUTH_URL", fake.token_url())
            .env("RUST_LOG", "info")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("opros starts");
        let service = Service { child, port, log };
        service.ready().await;
        service
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn ready(&self) {
        let http = reqwest::Client::new();
        let url = self.url("/healthz");
        within(
            Duration::from_secs(60),
            "the service answers /healthz",
            || {
                let r = http.get(&url).send();
                async move { r.await.is_ok_and(|r| r.status().is_success()) }
            },
        )
        .await;
    }

    /// SIGKILL: no shutdown code runs.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls until `ok` holds, failing after `deadline`.
async fn within<F, Fut>(deadline: Duration, what: &str, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    while !ok().await {
        assert!(
            Instant::now() < until,
            "timed out ({deadline:?}) waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn install(fake: &FakePortal, service: &Service) {
    let r = fake
        .post_install(&service.url("/b24/install"))
        .await
        .expect("install POST delivered");
    assert_eq!(r.status(), 200);
    let _ = fake.finish_install().await;
}

/// A robot run on a new deal; returns the deal once its link came back (the link's
/// token is the last one sent).
async fn robot_run(fake: &FakePortal) -> u64 {
    let deal = patient_deal(fake);
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[])
        .await
        .expect("robot call delivered");
    assert_eq!(r.status(), 200);
    deal
}

fn link_tokens(fake: &FakePortal) -> Vec<String> {
    fake.event_sends()
        .iter()
        .map(|s| {
            s.1["SURVEY_URL"]
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

async fn submit(http: &reqwest::Client, service: &Service, token: &str) {
    let (status, body) =
        crate::support::submit_through_api(http, &service.url(""), token, full_answers).await;
    assert_eq!(status, 200, "{body}");
}

fn comments_on(fake: &FakePortal, deal: u64) -> usize {
    fake.timeline_comments()
        .iter()
        .filter(|c| c.entity_id == deal)
        .count()
}

async fn open_jobs(db: &DatabaseConnection) -> Vec<outbox_job::Model> {
    outbox_job::Entity::find()
        .filter(outbox_job::Column::DoneAt.is_null())
        .all(db)
        .await
        .expect("read jobs")
}

/// The portal refuses everything for a while (503 `QUERY_LIMIT_EXCEEDED`, §10.1); the
/// comment's next call hangs, and the service is killed in the middle of it, holding
/// the job's lease. The portal recovers; the service started again delivers the
/// comment at once, exactly once.
async fn restart_after_sigkill(test_db: TestDb) {
    let fake = fake().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let http = reqwest::Client::new();
    let mut first = Service::start(&test_db.url, port, &fake, dir.path(), "first").await;
    install(&fake, &first).await;
    let deal = robot_run(&fake).await;
    within(Duration::from_secs(20), "the robot's link", || async {
        fake.event_sends().len() == 1
    })
    .await;
    let token = link_tokens(&fake).pop().expect("a link");

    // One attempt's worth of pushback (the client's own retries included), then a
    // call that never answers.
    fake.fail_next("crm.timeline.comment.add", Fault::QueryLimit, 4);
    fake.fail_next("crm.timeline.comment.add", Fault::Delay(HANG), 1);
    submit(&http, &first, &token).await;
    let db = opros::db::connect(&test_db.url).await.expect("connect");
    within(
        Duration::from_secs(30),
        "the comment's second try in flight",
        || async {
            let held = open_jobs(&db).await.into_iter().any(|j| {
                j.kind == "post_completion" && j.attempts >= 2 && j.locked_until.is_some()
            });
            held && !fake.calls_of("crm.timeline.comment.list").is_empty()
        },
    )
    .await;
    let deferred = open_jobs(&db)
        .await
        .into_iter()
        .find(|j| j.kind == "post_completion")
        .expect("the comment's job");
    assert_eq!(
        (deferred.dead_at, deferred.deferrals),
        (None, 1),
        "the pushback was a pause, not a failure"
    );
    first.kill();

    fake.clear_faults("crm.timeline.comment.add");
    let restarted = Instant::now();
    let second = Service::start(&test_db.url, port, &fake, dir.path(), "second").await;
    let started = restarted.elapsed();
    let deadline = RESTART_TARGET.saturating_sub(started);
    within(deadline, "the comment after the restart", || async {
        comments_on(&fake, deal) >= 1
    })
    .await;
    eprintln!(
        "[{}] restart after SIGKILL: comment delivered {:?} after the restart (process ready in {started:?})",
        test_db.backend,
        restarted.elapsed()
    );
    within(Duration::from_secs(20), "the outbox to empty", || async {
        open_jobs(&db).await.is_empty()
    })
    .await;
    assert_eq!(
        comments_on(&fake, deal),
        1,
        "[{}] one comment, no duplicate\n{}",
        test_db.backend,
        second.log_tail()
    );
}

#[tokio::test]
async fn a_service_killed_mid_job_delivers_within_seconds_of_its_restart_on_sqlite() {
    restart_after_sigkill(sqlite()).await;
}

#[tokio::test]
#[ignore = "needs OPROS_TEST_POSTGRES_URL (see README)"]
async fn a_service_killed_mid_job_delivers_within_seconds_of_its_restart_on_postgres() {
    let Some(pg) = postgres("recovery::restart_postgres").await else {
        return;
    };
    restart_after_sigkill(pg).await;
}

/// Two instances on one PostgreSQL database. During an outage, A is in the middle of
/// calls (their leases held) and B's tries are pushed back; A is killed with SIGKILL
/// and the portal recovers. B delivers six robot runs and six completions within the
/// target, each exactly once.
#[tokio::test]
#[ignore = "needs OPROS_TEST_POSTGRES_URL (see README)"]
async fn a_surviving_instance_finishes_a_killed_ones_jobs() {
    let Some(pg) = postgres("recovery::takeover").await else {
        return;
    };
    let fake = fake().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let http = reqwest::Client::new();
    let mut a = Service::start(&pg.url, free_port(), &fake, dir.path(), "a").await;
    install(&fake, &a).await;
    let mut earlier = Vec::new();
    for _ in 0..6 {
        earlier.push(robot_run(&fake).await);
    }
    within(Duration::from_secs(30), "six links", || async {
        fake.event_sends().len() == 6
    })
    .await;
    let tokens = link_tokens(&fake);

    // The outage: A's next comment call hangs (it is killed in the middle of it),
    // every later call is refused.
    fake.fail_next("crm.timeline.comment.add", Fault::Delay(HANG), 1);
    for method in [
        "crm.timeline.comment.add",
        "crm.timeline.comment.list",
        "batch",
    ] {
        fake.fail_next(method, Fault::QueryLimit, 100_000);
    }
    for token in &tokens {
        submit(&http, &a, token).await;
    }
    for _ in 0..6 {
        robot_run(&fake).await;
    }
    let db = opros::db::connect(&pg.url).await.expect("connect");
    let a_name = format!(":{}", a.port);
    within(
        Duration::from_secs(30),
        "A in the middle of a call",
        || async {
            open_jobs(&db).await.iter().any(|j| {
                j.lease_owner
                    .as_deref()
                    .is_some_and(|o| o.ends_with(&a_name))
            })
        },
    )
    .await;
    let b = Service::start(&pg.url, free_port(), &fake, dir.path(), "b").await;
    let held_by_a = open_jobs(&db)
        .await
        .iter()
        .filter(|j| {
            j.lease_owner
                .as_deref()
                .is_some_and(|o| o.ends_with(&a_name))
        })
        .count();
    a.kill();

    for method in [
        "crm.timeline.comment.add",
        "crm.timeline.comment.list",
        "batch",
    ] {
        fake.clear_faults(method);
    }
    let recovered = Instant::now();
    within(TAKEOVER_TARGET, "B to deliver A's jobs", || async {
        fake.event_sends().len() == 12 && earlier.iter().all(|d| comments_on(&fake, *d) >= 1)
    })
    .await;
    eprintln!(
        "[postgres] takeover: {held_by_a} jobs leased by the killed instance; all delivered {:?} after the portal recovered",
        recovered.elapsed()
    );
    assert!(held_by_a >= 1);
    within(Duration::from_secs(30), "the outbox to empty", || async {
        open_jobs(&db).await.is_empty()
    })
    .await;
    for deal in &earlier {
        assert_eq!(
            comments_on(&fake, *deal),
            1,
            "deal {deal}: one comment\n{}",
            b.log_tail()
        );
    }
    let mut sent = link_tokens(&fake);
    sent.sort();
    sent.dedup();
    assert_eq!(sent.len(), 12, "every robot run answered once");
}

/// SIGTERM in the middle of a call that does not answer: the service stops within
/// its grace period and gives the job's lease up, so the next instance starts on it
/// without waiting for the lease to lapse.
#[tokio::test]
async fn sigterm_gives_the_leases_of_unfinished_jobs_up() {
    let test_db = sqlite();
    let fake = fake().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let http = reqwest::Client::new();
    let mut service = Service::start(&test_db.url, free_port(), &fake, dir.path(), "one").await;
    install(&fake, &service).await;
    robot_run(&fake).await;
    within(Duration::from_secs(20), "the robot's link", || async {
        fake.event_sends().len() == 1
    })
    .await;
    let token = link_tokens(&fake).pop().expect("a link");
    fake.fail_next("crm.timeline.comment.add", Fault::Delay(HANG), 1);
    let requests = fake.http_request_count();
    submit(&http, &service, &token).await;
    let db = opros::db::connect(&test_db.url).await.expect("connect");
    within(
        Duration::from_secs(20),
        "the comment's call in flight",
        || async {
            let held = open_jobs(&db)
                .await
                .iter()
                .any(|j| j.kind == "post_completion" && j.lease.is_some());
            held && fake.http_request_count() > requests
        },
    )
    .await;

    let stopped = Instant::now();
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(service.child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let status = loop {
        if let Some(status) = service.child.try_wait().expect("child status") {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "still running 30 s after SIGTERM\n{}",
            service.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(status.success(), "{status:?}\n{}", service.log_tail());
    let job = open_jobs(&db)
        .await
        .into_iter()
        .find(|j| j.kind == "post_completion")
        .expect("the comment is still to be delivered");
    assert_eq!(
        (job.lease, job.locked_until, job.dead_at),
        (None, None, None),
        "the lease is given up on SIGTERM"
    );
    eprintln!("SIGTERM: stopped and released in {:?}", stopped.elapsed());
}

/// One portal hangs and then refuses everything; another portal's robot run is
/// answered meanwhile, by the same worker.
#[tokio::test]
async fn one_portals_outage_does_not_delay_another() {
    use opros::testing::fake_portal::FakePortalConfig;

    let (slow, app) = crate::support::portal::installed().await;
    let other = FakePortal::start(FakePortalConfig {
        member_id: "9b1d7e3a5c2f4e6a8b0d1f3e5a7c9b2d".into(),
        ..FakePortalConfig::default()
    })
    .await
    .expect("second portal");
    crate::support::portal::install(&other, &app).await;

    slow.fail_next("batch", Fault::Delay(Duration::from_secs(120)), 1);
    slow.fail_next("batch", Fault::QueryLimit, 100_000);
    robot_run(&slow).await;
    within(
        Duration::from_secs(10),
        "the slow portal's batch in flight",
        || async {
            open_jobs(&app.state.db)
                .await
                .iter()
                .any(|j| j.locked_until.is_some())
        },
    )
    .await;
    let started = Instant::now();
    robot_run(&other).await;
    crate::support::eventually("the other portal's link", || async {
        other.event_sends().len() == 1
    })
    .await;
    eprintln!(
        "isolation: the other portal answered in {:?} while the first hung",
        started.elapsed()
    );
    assert!(slow.event_sends().is_empty());
    let stuck = open_jobs(&app.state.db).await;
    assert!(
        !stuck.is_empty() && stuck.iter().all(|j| j.dead_at.is_none()),
        "{stuck:?}"
    );
}

/// A call that takes longer than a lease: the worker's heartbeat keeps the job, so
/// another instance on the same database never runs it a second time.
#[tokio::test]
#[ignore = "needs OPROS_TEST_POSTGRES_URL (see README)"]
async fn a_running_job_keeps_its_lease_past_the_lease_time() {
    let Some(pg) = postgres("recovery::heartbeat").await else {
        return;
    };
    let fake = fake().await;
    let a = crate::support::portal::app_for_db(&fake, &pg.url, &[]).await;
    crate::support::portal::install(&fake, &a).await;
    let deal = robot_run(&fake).await;
    within(Duration::from_secs(20), "the robot's link", || async {
        fake.event_sends().len() == 1
    })
    .await;
    let token = link_tokens(&fake).pop().expect("a link");
    let slow = Duration::from_millis(opros::outbox::jobs::LEASE_MS as u64) + Duration::from_secs(6);
    fake.fail_next("crm.timeline.comment.add", Fault::Delay(slow), 1);
    let (status, survey) = a.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200);
    let (status, _) = a
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &json!({"answers": full_answers(&survey)}),
        )
        .await;
    assert_eq!(status, 200);
    within(
        Duration::from_secs(20),
        "the comment's call in flight",
        || async {
            open_jobs(&a.state.db)
                .await
                .iter()
                .any(|j| j.kind == "post_completion" && j.lease.is_some())
        },
    )
    .await;
    let b = crate::support::portal::app_for_db(&fake, &pg.url, &[]).await;
    within(
        slow + Duration::from_secs(30),
        "the slow comment",
        || async { open_jobs(&b.state.db).await.is_empty() },
    )
    .await;
    assert_eq!(comments_on(&fake, deal), 1);
    assert!(
        fake.calls_of("crm.timeline.comment.list").is_empty(),
        "nobody ran the job a second time"
    );
    assert_eq!(fake.calls_of("crm.timeline.comment.add").len(), 1);
}
