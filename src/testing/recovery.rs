//! The outbox's crash scenarios with real `opros` processes (issue 15), shared by the
//! tests that check the targets and the bench that prints the figures: a patient
//! submits while the portal pushes back, the process is killed with SIGKILL in the
//! middle of a call, the portal recovers. Each scenario returns what it measured and
//! how many times things reached the portal; the caller judges.

use std::path::Path;
use std::time::{Duration, Instant};

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

use super::service_process::{ServiceProcess, free_port, within};
use super::{FakePortal, FakePortalConfig, Fault, full_answers, submit_through_api};
use crate::db::entities::outbox_job;

/// A call that never answers while a scenario runs: the service is "in the middle" of it.
pub const HANG: Duration = Duration::from_secs(3600);

/// The methods a portal in an outage refuses in the takeover scenario.
const OUTAGE_METHODS: [&str; 3] = [
    "crm.timeline.comment.add",
    "crm.timeline.comment.list",
    "batch",
];

/// The install page's POST and what `BX24.installFinish()` does.
pub async fn install(fake: &FakePortal, service: &ServiceProcess) -> Result<(), String> {
    let r = fake
        .post_install(&service.url("/b24/install"))
        .await
        .map_err(|e| format!("install POST: {e}"))?;
    if r.status() != 200 {
        return Err(format!("install answered {}", r.status()));
    }
    let _ = fake.finish_install().await;
    Ok(())
}

/// A robot run on a new patient deal; returns the deal. Its link comes back later,
/// through the outbox (`link_tokens`).
pub async fn robot_run(fake: &FakePortal) -> Result<u64, String> {
    let contact = fake.add_contact("Анна", "Петровна", "Смирнова", "+79161234567");
    let deal = fake.add_deal("Приём терапевта 14.01", 3, Some(contact));
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[])
        .await
        .map_err(|e| format!("robot call: {e}"))?;
    if r.status() != 200 {
        return Err(format!("robot call answered {}", r.status()));
    }
    Ok(deal)
}

/// The link tokens sent back to business processes, in order.
pub fn link_tokens(fake: &FakePortal) -> Vec<String> {
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

/// The patient fills everything in and submits.
pub async fn submit(
    http: &reqwest::Client,
    service: &ServiceProcess,
    token: &str,
) -> Result<(), String> {
    let (status, body) = submit_through_api(http, &service.url(""), token, full_answers).await?;
    if status != 200 {
        return Err(format!("submit answered {status}: {body}"));
    }
    Ok(())
}

/// Timeline comments on `deal` (one per completed survey; more is a duplicate).
pub fn comments_on(fake: &FakePortal, deal: u64) -> usize {
    fake.timeline_comments()
        .iter()
        .filter(|c| c.entity_id == deal)
        .count()
}

/// Jobs not done yet, dead ones included.
pub async fn open_jobs(db: &DatabaseConnection) -> Result<Vec<outbox_job::Model>, String> {
    outbox_job::Entity::find()
        .filter(outbox_job::Column::DoneAt.is_null())
        .all(db)
        .await
        .map_err(|e| format!("read jobs: {e}"))
}

async fn fake_portal() -> Result<FakePortal, String> {
    FakePortal::start(FakePortalConfig::default())
        .await
        .map_err(|e| format!("fake portal: {e}"))
}

async fn connect(db_url: &str) -> Result<DatabaseConnection, String> {
    crate::db::connect(db_url)
        .await
        .map_err(|e| format!("connect: {e}"))
}

/// `open_jobs(db)` is empty, a read failure counting as "not yet".
async fn outbox_empty(db: &DatabaseConnection) -> bool {
    open_jobs(db).await.is_ok_and(|jobs| jobs.is_empty())
}

/// A started, installed service with one robot run answered: the deal and its link.
struct Answered {
    fake: FakePortal,
    service: ServiceProcess,
    deal: u64,
    token: String,
}

async fn answered(
    bin: &Path,
    db_url: &str,
    port: u16,
    dir: &Path,
    name: &str,
) -> Result<Answered, String> {
    let fake = fake_portal().await?;
    let service = ServiceProcess::start(bin, db_url, port, &fake, dir, name).await?;
    install(&fake, &service).await?;
    let deal = robot_run(&fake).await?;
    within(Duration::from_secs(20), "the robot's link", || async {
        fake.event_sends().len() == 1
    })
    .await?;
    let token = link_tokens(&fake).pop().ok_or("no link was sent")?;
    Ok(Answered {
        fake,
        service,
        deal,
        token,
    })
}

/// A healthy service's delivery, the baseline for the restart.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// From the submit's answer to the timeline comment at the portal.
    pub submit_to_comment: Duration,
    /// Comments on the deal once the outbox is empty (1 is right).
    pub comments: usize,
}

/// The normal path, no fault and no crash: submit, then wait for the comment.
pub async fn healthy_delivery(
    bin: &Path,
    db_url: &str,
    dir: &Path,
    deliver_within: Duration,
) -> Result<Delivery, String> {
    let run = answered(bin, db_url, free_port()?, dir, "healthy").await?;
    let http = reqwest::Client::new();
    submit(&http, &run.service, &run.token).await?;
    let submitted = Instant::now();
    within(deliver_within, "the comment", || async {
        comments_on(&run.fake, run.deal) >= 1
    })
    .await
    .map_err(|e| format!("{e}\n{}", run.service.log_tail()))?;
    let submit_to_comment = submitted.elapsed();
    let db = connect(db_url).await?;
    within(Duration::from_secs(20), "the outbox to empty", || {
        outbox_empty(&db)
    })
    .await?;
    Ok(Delivery {
        submit_to_comment,
        comments: comments_on(&run.fake, run.deal),
    })
}

/// What a restart after SIGKILL took.
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    /// From starting the second process to its `/healthz` answering.
    pub ready_in: Duration,
    /// From the second process being ready to the pending comment at the portal; zero
    /// when the worker delivered it before `/healthz` first answered.
    pub ready_to_comment: Duration,
    /// From starting the second process to the pending comment at the portal.
    pub start_to_comment: Duration,
    /// Comments on the deal once the outbox is empty (1 is right).
    pub comments: usize,
}

/// The portal refuses everything for a while (503 `QUERY_LIMIT_EXCEEDED`, §10.1); the
/// comment's next call hangs, and the service is killed in the middle of it, holding
/// the job's lease. The portal recovers and the service is started again on the same
/// port and database. Fails when the comment has not arrived `deliver_within` after
/// the second start began, or when the pushback was counted as a failure.
pub async fn restart_after_sigkill(
    bin: &Path,
    db_url: &str,
    dir: &Path,
    deliver_within: Duration,
) -> Result<Restart, String> {
    let port = free_port()?;
    let Answered {
        fake,
        service: mut first,
        deal,
        token,
    } = answered(bin, db_url, port, dir, "first").await?;
    let http = reqwest::Client::new();

    // One attempt's worth of pushback (the client's own retries included), then a
    // call that never answers.
    fake.fail_next("crm.timeline.comment.add", Fault::QueryLimit, 4);
    fake.fail_next("crm.timeline.comment.add", Fault::Delay(HANG), 1);
    submit(&http, &first, &token).await?;
    let db = connect(db_url).await?;
    within(
        Duration::from_secs(30),
        "the comment's second try in flight",
        || async {
            let held = open_jobs(&db)
                .await
                .unwrap_or_default()
                .into_iter()
                .any(|j| {
                    j.kind == "post_completion" && j.attempts >= 2 && j.locked_until.is_some()
                });
            held && !fake.calls_of("crm.timeline.comment.list").is_empty()
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", first.log_tail()))?;
    let deferred = open_jobs(&db)
        .await?
        .into_iter()
        .find(|j| j.kind == "post_completion")
        .ok_or("the comment's job is gone")?;
    if (deferred.dead_at, deferred.deferrals) != (None, 1) {
        return Err(format!(
            "the pushback was not a single pause: dead_at {:?}, deferrals {}",
            deferred.dead_at, deferred.deferrals
        ));
    }
    first.kill();

    fake.clear_faults("crm.timeline.comment.add");
    let restarted = Instant::now();
    let second = ServiceProcess::start(bin, db_url, port, &fake, dir, "second").await?;
    let ready_in = restarted.elapsed();
    let ready = Instant::now();
    within(
        deliver_within.saturating_sub(ready_in),
        "the comment after the restart",
        || async { comments_on(&fake, deal) >= 1 },
    )
    .await
    .map_err(|e| format!("{e}\n{}", second.log_tail()))?;
    let (ready_to_comment, start_to_comment) = (ready.elapsed(), restarted.elapsed());
    within(Duration::from_secs(20), "the outbox to empty", || {
        outbox_empty(&db)
    })
    .await
    .map_err(|e| format!("{e}\n{}", second.log_tail()))?;
    Ok(Restart {
        ready_in,
        ready_to_comment,
        start_to_comment,
        comments: comments_on(&fake, deal),
    })
}

/// What a surviving instance's takeover took.
#[derive(Debug, Clone, Copy)]
pub struct Takeover {
    /// Jobs whose lease the killed instance held when it died.
    pub held_by_killed: usize,
    /// From the portal's recovery to every job delivered.
    pub recovery_to_delivered: Duration,
    /// Comments and link sends beyond one per deal / robot run.
    pub duplicates: usize,
}

/// Two instances on one PostgreSQL database. During an outage, A is in the middle of
/// calls (their leases held) and B's tries are pushed back; A is killed with SIGKILL
/// and the portal recovers. Six robot runs and six completions must reach the portal
/// within `deliver_within` of the recovery.
pub async fn takeover(
    bin: &Path,
    db_url: &str,
    dir: &Path,
    deliver_within: Duration,
) -> Result<Takeover, String> {
    let fake = fake_portal().await?;
    let http = reqwest::Client::new();
    let mut a = ServiceProcess::start(bin, db_url, free_port()?, &fake, dir, "a").await?;
    install(&fake, &a).await?;
    let mut earlier = Vec::new();
    for _ in 0..6 {
        earlier.push(robot_run(&fake).await?);
    }
    within(Duration::from_secs(30), "six links", || async {
        fake.event_sends().len() == 6
    })
    .await?;
    let tokens = link_tokens(&fake);

    // The outage: A's next comment call hangs (it is killed in the middle of it),
    // every later call is refused.
    fake.fail_next("crm.timeline.comment.add", Fault::Delay(HANG), 1);
    for method in OUTAGE_METHODS {
        fake.fail_next(method, Fault::QueryLimit, 100_000);
    }
    for token in &tokens {
        submit(&http, &a, token).await?;
    }
    for _ in 0..6 {
        robot_run(&fake).await?;
    }
    let db = connect(db_url).await?;
    let a_name = format!(":{}", a.port());
    let held_by_a = |jobs: &[outbox_job::Model]| {
        jobs.iter()
            .filter(|j| {
                j.lease_owner
                    .as_deref()
                    .is_some_and(|o| o.ends_with(&a_name))
            })
            .count()
    };
    within(
        Duration::from_secs(30),
        "A in the middle of a call",
        || async { held_by_a(&open_jobs(&db).await.unwrap_or_default()) >= 1 },
    )
    .await
    .map_err(|e| format!("{e}\n{}", a.log_tail()))?;
    let b = ServiceProcess::start(bin, db_url, free_port()?, &fake, dir, "b").await?;
    let held_by_killed = held_by_a(&open_jobs(&db).await?);
    a.kill();

    for method in OUTAGE_METHODS {
        fake.clear_faults(method);
    }
    let recovered = Instant::now();
    within(deliver_within, "B to deliver A's jobs", || async {
        fake.event_sends().len() >= 12 && earlier.iter().all(|d| comments_on(&fake, *d) >= 1)
    })
    .await
    .map_err(|e| format!("{e}\n{}", b.log_tail()))?;
    let recovery_to_delivered = recovered.elapsed();
    within(Duration::from_secs(30), "the outbox to empty", || {
        outbox_empty(&db)
    })
    .await
    .map_err(|e| format!("{e}\n{}", b.log_tail()))?;
    let extra_comments: usize = earlier
        .iter()
        .map(|d| comments_on(&fake, *d).saturating_sub(1))
        .sum();
    let mut sent = link_tokens(&fake);
    let sends = sent.len();
    sent.sort();
    sent.dedup();
    Ok(Takeover {
        held_by_killed,
        recovery_to_delivered,
        duplicates: extra_comments + (sends - sent.len()),
    })
}
