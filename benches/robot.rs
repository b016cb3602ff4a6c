//! The robot «Отправить опрос» and the patient's submit under load, against the
//! release binary (`opros serve` as a child process, as in production). Prints
//! figures; asserts nothing. Absolute numbers move with the machine and with whatever
//! else runs on it; the ratio to the bare handler measured in the same run does not
//! move as much, and is the figure to compare.
//!
//! 1. Burst: 100 robot runs on a portal limited to 2 requests/s with a burst of 10,
//!    from the first robot call to the last `bizproc.event.send` the portal accepts,
//!    and how many robot calls were answered 503.
//! 2. Robot handler, SQLite and (with `OPROS_BENCH_POSTGRES_URL`, a server where
//!    databases may be created) PostgreSQL: requests/s and p50/p99 of
//!    `POST /b24/robot/send-survey` at 50 connections with `wrk` (Debian's package),
//!    every body a distinct robot run on a portal whose limit is lifted, then a bare
//!    poem handler in this process with the same `wrk`. Also the start-up time (spawn
//!    to `/healthz`, migrations on a fresh database included) and the resident memory
//!    of the service idle and after the load. Then the robot again, with 20 000 open
//!    waits of «Дождаться анкеты» on other deals of the portal.
//! 3. Submit: rounds of 50 patients submitting the built-in questionnaire at once
//!    (each on a link of its own), p50/p99 over 500 submits.
//! 4. The PDF of the built-in questionnaire: size and render time.
//!
//! `OPROS_BENCH_PARTS` picks parts (`burst,sqlite,postgres,submit,pdf`, all by
//! default), `OPROS_BENCH_WRK_SECS` the length of each `wrk` run (10). `OPROS_BENCH_SERVE=1` only starts the service on SQLite, installs it and
//! writes the `wrk` script, then waits: for a profile of the binary under a load
//! started by hand (`OPROS_BENCH_BIN` names a wrapper, e.g. one running callgrind).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opros::testing::fake_portal::{FakePortal, FakePortalConfig};
use opros::testing::recovery::{install, link_tokens};
use opros::testing::{ServiceProcess, free_port, full_answers, new_postgres_database, within};
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CONNECTIONS: usize = 50;
const PATIENTS: usize = 50;
const SUBMITS: usize = 500;

fn bin() -> PathBuf {
    std::env::var_os("OPROS_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_opros")))
}

fn wrk_secs() -> String {
    std::env::var("OPROS_BENCH_WRK_SECS").unwrap_or_else(|_| "10".to_owned())
}

/// The service on `db_url`, its start-up time (spawn to `/healthz`), installed.
async fn service(
    fake: &FakePortal,
    db_url: &str,
    dir: &Path,
    rate: &str,
) -> Result<(ServiceProcess, Duration), BoxError> {
    let port = free_port()?;
    let started = Instant::now();
    let service = ServiceProcess::start_with(
        &bin(),
        db_url,
        port,
        fake,
        dir,
        "opros",
        &[("B24_RATE_LIMIT", rate)],
    )
    .await?;
    let ready = started.elapsed();
    install(fake, &service)
        .await
        .map_err(|e| format!("{e}\n{}", service.log_tail()))?;
    Ok((service, ready))
}

/// Resident memory of a process in MiB (`VmRSS`).
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted
        .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

async fn burst() -> Result<(), BoxError> {
    let fake = FakePortal::start(FakePortalConfig::default()).await?;
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}/opros.db?mode=rwc", dir.path().display());
    let (_service, _) = service(&fake, &db, dir.path(), "2/10").await?;
    let deals: Vec<u64> = (0..100)
        .map(|i| {
            let c = fake.add_contact("Анна", "Петровна", &format!("Смирнова{i}"), "+79160000000");
            fake.add_deal("Приём", 3, Some(c))
        })
        .collect();
    // The portal's limit starts now, with an empty bucket, as after a quiet night.
    fake.set_rate(2.0, 10);
    let before = fake.http_request_count();
    let started = Instant::now();
    let runs = deals
        .iter()
        .map(|d| fake.run_robot("opros_send_survey", *d, &[]));
    let (mut unavailable, mut failed) = (0, 0);
    for r in futures::future::join_all(runs).await {
        match r {
            Ok((_, r)) if r.status() == 503 => unavailable += 1,
            Ok((_, r)) if r.status().is_success() => {}
            _ => failed += 1,
        }
    }
    let accepted = started.elapsed();
    let _ = within(Duration::from_secs(120), "100 event sends", || {
        let n = fake.event_sends().len();
        async move { n >= 100 }
    })
    .await;
    let total = started.elapsed();
    let requests = fake.http_request_count() - before;
    let limited = fake
        .calls()
        .iter()
        .filter(|c| c.error.as_deref() == Some("QUERY_LIMIT_EXCEEDED"))
        .count();
    println!("robot burst: 100 runs on a 2/10 portal");
    println!(
        "  all 100 robot calls answered in {:.2} s: 503 × {unavailable}, other failures × {failed}",
        accepted.as_secs_f64()
    );
    println!(
        "  last bizproc.event.send after {:.2} s ({} of 100 delivered)",
        total.as_secs_f64(),
        fake.event_sends().len()
    );
    println!("  HTTP requests to the portal: {requests}, QUERY_LIMIT_EXCEEDED: {limited}");
    Ok(())
}

fn wrk_available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// What `wrk --latency` printed: req/s, p50, p99 and the non-2xx answers.
struct WrkFigures {
    rps: f64,
    p50: String,
    p99: String,
    non_2xx: u64,
    /// Requests completed (`N requests in …`).
    requests: u64,
}

fn parse_wrk(out: &str) -> WrkFigures {
    let mut f = WrkFigures {
        rps: 0.0,
        p50: "?".to_owned(),
        p99: "?".to_owned(),
        non_2xx: 0,
        requests: 0,
    };
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            f.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            v.trim().clone_into(&mut f.p50);
        } else if let Some(v) = t.strip_prefix("99%") {
            v.trim().clone_into(&mut f.p99);
        } else if let Some((n, _)) = t.split_once(" requests in ") {
            f.requests = n.trim().parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            f.non_2xx = v.trim().parse().unwrap_or(0);
        }
    }
    f
}

async fn run_wrk(url: String, script: Option<PathBuf>) -> Result<WrkFigures, BoxError> {
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("wrk");
        cmd.args([
            "-t2",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{}s", wrk_secs()),
        ])
        .arg("--latency");
        if let Some(s) = &script {
            cmd.arg("-s").arg(s);
        }
        cmd.arg(&url).output()
    })
    .await??;
    Ok(parse_wrk(&String::from_utf8_lossy(&out.stdout)))
}

/// A `wrk` script posting a real robot payload (protocol §4.3) with an event token
/// of its own per request (thread number and counter: both threads' Lua states would
/// draw the same random numbers), so every call creates an invitation and its jobs.
/// The run's prefix also takes the second `wrk` started, so the same script run
/// again against the same service (`OPROS_BENCH_SERVE`) repeats no token.
fn robot_script(fake: &FakePortal, deal: u64, path: &Path) -> Result<(), BoxError> {
    let body = format!(
        "code=opros_send_survey&document_id%5B0%5D=crm&document_id%5B1%5D=CCrmDocumentDeal\
         &document_id%5B2%5D=DEAL_{deal}&document_type%5B0%5D=crm&document_type%5B1%5D=CCrmDocumentDeal\
         &document_type%5B2%5D=DEAL&properties%5Breuse_active%5D=N&use_subscription=Y&timeout_duration=0\
         &auth%5Bmember_id%5D={}&auth%5Bapplication_token%5D={}&auth%5Bdomain%5D={}",
        fake.member_id(),
        fake.application_token(),
        fake.domain()
    );
    let run = format!("{:08x}", rand::random::<u32>());
    // The portal answers `bizproc.event.send` for these made-up runs as for real ones.
    fake.accept_event_tokens(&run, "opros_send_survey");
    let mut f = std::fs::File::create(path)?;
    writeln!(
        f,
        "wrk.method = \"POST\"\n\
         wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
         local threads = 0\n\
         local started = tostring(os.time())\n\
         function setup(thread)\n  threads = threads + 1\n  thread:set(\"tid\", threads)\nend\n\
         counter = 0\n\
         request = function()\n  counter = counter + 1\n  \
         local body = \"{body}&event_token={run}\" .. started .. \".\" .. tostring(tid) .. \"%7CA\" .. tostring(counter)\n  \
         return wrk.format(nil, nil, nil, body)\nend"
    )?;
    Ok(())
}

#[poem::handler]
fn bare_handler() -> &'static str {
    "ok"
}

/// The bare baseline: poem answering 200 in this process.
async fn bare_server() -> Result<(u16, CancellationToken), BoxError> {
    let port = free_port()?;
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = poem::Server::new(poem::listener::TcpListener::bind(format!(
            "127.0.0.1:{port}"
        )))
        .run_with_graceful_shutdown(
            poem::Route::new().at("/", bare_handler),
            stop.cancelled(),
            None,
        )
        .await;
    });
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/");
    within(Duration::from_secs(10), "the bare server", || {
        let r = http.get(&url).send();
        async move { r.await.is_ok() }
    })
    .await?;
    Ok((port, cancel))
}

/// Open waits of the robot «Дождаться анкеты» stored with the service's portal.
const OPEN_WAITS: usize = 20_000;

/// Stores `count` open waits on deals of the service's portal that no robot call
/// touches, due in a week (as if each workflow waited for its patient).
async fn add_open_waits(db_url: &str, count: usize) -> Result<(), BoxError> {
    use opros::db::entities::{outbox_job, portal};
    use sea_orm::{EntityTrait, Set};
    let db = opros::db::connect(db_url).await?;
    let portal = portal::Entity::find()
        .one(&db)
        .await?
        .ok_or("no portal installed")?
        .id;
    let now = chrono::Utc::now();
    let due = now.timestamp_millis() + 7 * 86_400_000;
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let rows = chunk.iter().map(|i| outbox_job::ActiveModel {
            portal_id: Set(Some(portal)),
            kind: Set(opros::outbox::survey_wait::KIND.to_owned()),
            payload: Set(serde_json::json!({})),
            idempotency_key: Set(opros::outbox::survey_wait::wait_key(
                portal,
                opros::crm::EntityRef {
                    kind: opros::crm::EntityType::Deal,
                    id: 1_000_000 + *i as i64,
                },
                None,
                "bench",
            )),
            attempts: Set(0),
            run_at: Set(due),
            deferrals: Set(0),
            paused: Set(false),
            created_at: Set(now),
            ..Default::default()
        });
        outbox_job::Entity::insert_many(rows).exec(&db).await?;
    }
    db.close().await?;
    Ok(())
}

async fn robot_handler(backend: &str, db_url: &str) -> Result<(), BoxError> {
    let fake = FakePortal::start(FakePortalConfig::default()).await?;
    let dir = tempfile::tempdir()?;
    let (service, ready) = service(&fake, db_url, dir.path(), "1000/1000").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_mib(service.id());
    let deal = fake.add_deal("Приём", 3, None);
    let script = dir.path().join("robot.lua");
    robot_script(&fake, deal, &script)?;
    let sent_before = fake.event_send_count();
    let robot = run_wrk(service.url("/b24/robot/send-survey"), Some(script.clone())).await?;
    let loaded = Instant::now();
    let after = rss_mib(service.id());
    // Every answered call's values reach its workflow: how long after the load the
    // outbox still needs for the last of them.
    let answered = usize::try_from(robot.requests.saturating_sub(robot.non_2xx)).unwrap_or(0);
    let drained = within(
        Duration::from_secs(300),
        "every robot's values sent",
        || {
            let n = fake.event_send_count() - sent_before;
            async move { n >= answered }
        },
    )
    .await
    .map(|()| loaded.elapsed());
    let sent = fake.event_send_count() - sent_before;
    let (bare_port, bare_stop) = bare_server().await?;
    let bare = run_wrk(format!("http://127.0.0.1:{bare_port}/"), None).await?;
    bare_stop.cancel();
    // A portal where workflows wait on «Дождаться анкеты»: every new link wakes its
    // own deal's waits, and must not pay for everyone else's.
    add_open_waits(db_url, OPEN_WAITS).await?;
    let waiting = run_wrk(service.url("/b24/robot/send-survey"), Some(script)).await?;
    println!(
        "robot handler [{backend}]: wrk -t2 -c{CONNECTIONS} -d{}s, {} cores",
        wrk_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  POST /b24/robot/send-survey: {:.0} req/s, p50 {}, p99 {}, non-2xx {}",
        robot.rps, robot.p50, robot.p99, robot.non_2xx
    );
    println!(
        "  bare poem handler:           {:.0} req/s, p50 {}, p99 {}",
        bare.rps, bare.p50, bare.p99
    );
    if bare.rps > 0.0 {
        println!("  ratio: {:.3} of the bare handler", robot.rps / bare.rps);
    }
    println!(
        "  with {OPEN_WAITS} open waits on other deals: {:.0} req/s, p50 {}, p99 {}, non-2xx {}",
        waiting.rps, waiting.p50, waiting.p99, waiting.non_2xx
    );
    match drained {
        Ok(d) => println!(
            "  bizproc.event.send: all {sent} sent {:.2} s after the load ended",
            d.as_secs_f64()
        ),
        Err(_) => println!("  bizproc.event.send: {sent} of {answered} sent 300 s after the load"),
    }
    println!(
        "  start-up (spawn → /healthz, fresh database): {:.0} ms; RSS idle {idle:.1} MiB, after the load {after:.1} MiB",
        ms(ready)
    );
    Ok(())
}

/// `PATIENTS` patients at once submit the built-in questionnaire, each on a link of
/// its own, `SUBMITS / PATIENTS` times over.
async fn submit() -> Result<(), BoxError> {
    let fake = FakePortal::start(FakePortalConfig::default()).await?;
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}/opros.db?mode=rwc", dir.path().display());
    let (service, _) = service(&fake, &db, dir.path(), "1000/1000").await?;
    let contact = fake.add_contact("Анна", "Петровна", "Смирнова", "+79161234567");
    let deals: Vec<u64> = (0..SUBMITS)
        .map(|_| fake.add_deal("Приём", 3, Some(contact)))
        .collect();
    for chunk in deals.chunks(PATIENTS) {
        let runs = chunk
            .iter()
            .map(|d| fake.run_robot("opros_send_survey", *d, &[]));
        for r in futures::future::join_all(runs).await {
            r?;
        }
    }
    within(Duration::from_secs(120), "every link sent back", || {
        let n = fake.event_sends().len();
        async move { n >= SUBMITS }
    })
    .await?;
    let tokens = link_tokens(&fake);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(PATIENTS)
        .build()?;
    let base = service.url("");
    let survey: serde_json::Value = http
        .get(format!("{base}/api/v1/surveys/{}", tokens[0]))
        .send()
        .await?
        .json()
        .await?;
    let body = Arc::new(serde_json::json!({"answers": full_answers(&survey)}).to_string());
    let started = Instant::now();
    let (mut times, mut failures) = (Vec::new(), 0);
    // Rounds of `PATIENTS` submits sent at once; the next round starts when the
    // last of these is answered.
    for round in tokens.chunks(PATIENTS) {
        let submits = round.iter().map(|token| {
            let (http, body) = (http.clone(), body.clone());
            let url = format!("{base}/api/v1/surveys/{token}/submit");
            async move {
                let sent = Instant::now();
                let r = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.as_str().to_owned())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        Some(sent.elapsed())
                    }
                    _ => None,
                }
            }
        });
        for t in futures::future::join_all(submits).await {
            match t {
                Some(t) => times.push(t),
                None => failures += 1,
            }
        }
    }
    let elapsed = started.elapsed();
    times.sort();
    println!(
        "submit [sqlite]: {} submits in rounds of {PATIENTS} patients at once, {:.2} s ({:.0}/s), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, failures {failures}",
        times.len(),
        elapsed.as_secs_f64(),
        times.len() as f64 / elapsed.as_secs_f64(),
        ms(percentile(&times, 50)),
        ms(percentile(&times, 99)),
        ms(times.last().copied().unwrap_or_default()),
    );
    Ok(())
}

fn pdf() {
    let input = opros::report::sample::sample_input();
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..50 {
        let started = Instant::now();
        match opros::report::render(&input) {
            Ok(r) => size = r.pdf.len(),
            Err(e) => {
                println!("pdf: render failed: {e}");
                return;
            }
        }
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "pdf: {:.1} KB, median {:.2} ms, p95 {:.2} ms (the report bench has more)",
        size as f64 / 1024.0,
        ms(percentile(&times, 50)),
        ms(percentile(&times, 95))
    );
}

/// For a profile: the service up and installed, the script written; then waits.
async fn serve() -> Result<(), BoxError> {
    let fake = FakePortal::start(FakePortalConfig::default()).await?;
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}/opros.db?mode=rwc", dir.path().display());
    let (service, _) = service(&fake, &db, dir.path(), "1000/1000").await?;
    let deal = fake.add_deal("Приём", 3, None);
    let script = std::env::temp_dir().join("opros-robot.lua");
    robot_script(&fake, deal, &script)?;
    println!(
        "serving: pid {} wrk -t2 -c{CONNECTIONS} -d10s -s {} {}",
        service.id(),
        script.display(),
        service.url("/b24/robot/send-survey")
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

async fn all() -> Result<(), BoxError> {
    if std::env::var_os("OPROS_BENCH_SERVE").is_some() {
        return serve().await;
    }
    let parts = std::env::var("OPROS_BENCH_PARTS")
        .unwrap_or_else(|_| "burst,sqlite,postgres,submit,pdf".to_owned());
    let part = |p: &str| parts.split(',').any(|x| x.trim() == p);
    if part("burst") {
        burst().await?;
    }
    if part("sqlite") || part("postgres") {
        if !wrk_available() {
            println!("robot handler: SKIP, wrk is not installed (apt-get install wrk)");
        } else {
            if part("sqlite") {
                let dir = tempfile::tempdir()?;
                let db = format!("sqlite://{}/opros.db?mode=rwc", dir.path().display());
                robot_handler("sqlite", &db).await?;
            }
            if part("postgres") {
                match std::env::var("OPROS_BENCH_POSTGRES_URL") {
                    Ok(admin) => {
                        let db = new_postgres_database(&admin, "opros_bench").await?;
                        robot_handler("postgres", &db).await?;
                    }
                    Err(_) => {
                        println!(
                            "robot handler [postgres]: skipped (OPROS_BENCH_POSTGRES_URL is not set)"
                        )
                    }
                }
            }
        }
    }
    if part("submit") {
        submit().await?;
    }
    if part("pdf") {
        pdf();
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(all())
}
