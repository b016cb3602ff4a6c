//! The outbox after a crash, with real processes: the `opros` binary is started as a
//! child process against a fake portal and killed with SIGKILL in the middle of a
//! job. A restarted instance takes its own leases back at once; a surviving instance
//! takes a dead one's over when they lapse; a portal's outage pauses its queue
//! without killing jobs. Each case checks the targets and that nothing
//! reaches the portal twice. The scenarios live in `opros::testing::recovery`, shared
//! with `benches/recovery.rs`, which prints their figures.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use opros::testing::fake_portal::FakePortal;
use opros::testing::recovery::{
    HANG, comments_on, install, link_tokens, open_jobs, robot_run, submit,
};
use opros::testing::{Fault, ServiceProcess, free_port};
use sea_orm::DatabaseConnection;
use serde_json::json;

use crate::support::db::{TestDb, postgres, sqlite};
use crate::support::full_answers;
use crate::support::portal::fake;

/// The targets, after the portal recovers.
const RESTART_TARGET: Duration = Duration::from_secs(10);
const TAKEOVER_TARGET: Duration = Duration::from_secs(15);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_opros"))
}

/// Polls until `ok` holds, failing the test after `deadline`.
async fn within<F, Fut>(deadline: Duration, what: &str, ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    opros::testing::within(deadline, what, ok)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

async fn jobs(db: &DatabaseConnection) -> Vec<opros::db::entities::outbox_job::Model> {
    open_jobs(db).await.unwrap_or_else(|e| panic!("{e}"))
}

/// The scenario is in `opros::testing::recovery::restart_after_sigkill`: killed with
/// SIGKILL in the middle of the comment's call during an outage, started again after
/// the portal recovers; the comment arrives within the target, exactly once.
async fn restart_after_sigkill(test_db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let restart = opros::testing::recovery::restart_after_sigkill(
        bin(),
        &test_db.url,
        dir.path(),
        RESTART_TARGET,
    )
    .await
    .unwrap_or_else(|e| panic!("[{}] {e}", test_db.backend));
    eprintln!("[{}] restart after SIGKILL: {restart:?}", test_db.backend);
    assert_eq!(
        restart.comments, 1,
        "[{}] one comment, no duplicate",
        test_db.backend
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

/// Two instances on one PostgreSQL database (`opros::testing::recovery::takeover`):
/// A is killed with SIGKILL holding leases during an outage; after the portal
/// recovers B delivers six robot runs and six completions within the target, each
/// exactly once.
#[tokio::test]
#[ignore = "needs OPROS_TEST_POSTGRES_URL (see README)"]
async fn a_surviving_instance_finishes_a_killed_ones_jobs() {
    let Some(pg) = postgres("recovery::takeover").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let takeover = opros::testing::recovery::takeover(bin(), &pg.url, dir.path(), TAKEOVER_TARGET)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("[postgres] takeover: {takeover:?}");
    assert!(takeover.held_by_killed >= 1, "A held no lease when killed");
    assert_eq!(takeover.duplicates, 0, "every comment and link sent once");
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
    let mut service = ServiceProcess::start(
        bin(),
        &test_db.url,
        free_port().expect("free port"),
        &fake,
        dir.path(),
        "one",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    install(&fake, &service).await.expect("installed");
    robot_run(&fake).await.expect("robot run");
    within(Duration::from_secs(20), "the robot's link", || async {
        fake.event_sends().len() == 1
    })
    .await;
    let token = link_tokens(&fake).pop().expect("a link");
    fake.fail_next("crm.timeline.comment.add", Fault::Delay(HANG), 1);
    let requests = fake.http_request_count();
    submit(&http, &service, &token).await.expect("submitted");
    let db = opros::db::connect(&test_db.url).await.expect("connect");
    within(
        Duration::from_secs(20),
        "the comment's call in flight",
        || async {
            let held = jobs(&db)
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
        .arg(service.id().to_string())
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let status = loop {
        if let Some(status) = service.try_wait().expect("child status") {
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
    let job = jobs(&db)
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
    robot_run(&slow).await.expect("robot run");
    within(
        Duration::from_secs(10),
        "the slow portal's batch in flight",
        || async {
            jobs(&app.state.db)
                .await
                .iter()
                .any(|j| j.locked_until.is_some())
        },
    )
    .await;
    let started = Instant::now();
    robot_run(&other).await.expect("robot run");
    crate::support::eventually("the other portal's link", || async {
        other.event_sends().len() == 1
    })
    .await;
    eprintln!(
        "isolation: the other portal answered in {:?} while the first hung",
        started.elapsed()
    );
    assert!(slow.event_sends().is_empty());
    let stuck = jobs(&app.state.db).await;
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
    let deal = robot_run(&fake).await.expect("robot run");
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
            jobs(&a.state.db)
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
        || async { jobs(&b.state.db).await.is_empty() },
    )
    .await;
    assert_eq!(comments_on(&fake, deal), 1);
    assert!(
        fake.calls_of("crm.timeline.comment.list").is_empty(),
        "nobody ran the job a second time"
    );
    assert_eq!(fake.calls_of("crm.timeline.comment.add").len(), 1);
}
