//! The robot «Отправить опрос» under load. Prints figures; asserts nothing.
//!
//! 1. Burst: 100 robot runs on a portal limited to 2 requests/s with a burst of 10,
//!    from the first robot call to the last `bizproc.event.send` the portal accepts.
//!    One request per run would take about a minute; coalescing into `batch` is what
//!    keeps it short.
//! 2. Handler: requests/s and p50/p99 of `POST /b24/robot/send-survey` at 50
//!    connections with `wrk` (Debian's package), next to a bare poem handler measured
//!    in the same run on the same machine.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use opros::testing::fake_portal::{FakePortal, FakePortalConfig};
use opros::{AppState, Application, Config};
use tokio_util::sync::CancellationToken;

struct Running {
    base: String,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn service(fake: &FakePortal, rate: &str) -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let vars: BTreeMap<String, String> = [
        (
            "DATABASE_URL",
            format!("sqlite://{}/opros.db?mode=rwc", dir.path().display()),
        ),
        ("PORT", port.to_string()),
        ("PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ("B24_CLIENT_ID", fake.client_id()),
        ("B24_CLIENT_SECRET", fake.client_secret()),
        ("B24_OAUTH_URL", fake.token_url()),
        ("B24_RATE_LIMIT", rate.to_owned()),
        ("RUST_LOG", "error".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = Config::from_map(&vars).expect("config");
    let listen = config.listen;
    let state = AppState::build(config).await.expect("state");
    let app = Application::with_state(state, listen).await.expect("bind");
    let base = format!("http://{}", app.addr());
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        let _ = app.run_until_stopped(c).await;
    });
    fake.post_install(&format!("{base}/b24/install"))
        .await
        .expect("install delivered");
    let _ = fake.finish_install().await;
    Running {
        base,
        cancel,
        _dir: dir,
    }
}

async fn burst() {
    let fake = FakePortal::start(FakePortalConfig::default())
        .await
        .expect("fake portal");
    let running = service(&fake, "2/10").await;
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
    for r in futures::future::join_all(runs).await {
        assert!(r.expect("robot call delivered").1.status().is_success());
    }
    let accepted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while fake.event_sends().len() < 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = started.elapsed();
    let requests = fake.http_request_count() - before;
    let limited = fake
        .calls()
        .iter()
        .filter(|c| c.error.as_deref() == Some("QUERY_LIMIT_EXCEEDED"))
        .count();
    println!("robot burst: 100 runs on a 2/10 portal");
    println!(
        "  all 100 robot calls answered in {:.2} s",
        accepted.as_secs_f64()
    );
    println!(
        "  last bizproc.event.send after {:.2} s ({} of 100 delivered)",
        total.as_secs_f64(),
        fake.event_sends().len()
    );
    println!("  HTTP requests to the portal: {requests}, QUERY_LIMIT_EXCEEDED: {limited}");
    running.cancel.cancel();
}

fn wrk_available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// `wrk` prints latency percentiles with `--latency`; pull out req/s, p50 and p99.
fn parse_wrk(out: &str) -> (f64, String, String) {
    let mut rps = 0.0;
    let (mut p50, mut p99) = (String::from("?"), String::from("?"));
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            p50 = v.trim().to_owned();
        } else if let Some(v) = t.strip_prefix("99%") {
            p99 = v.trim().to_owned();
        }
    }
    (rps, p50, p99)
}

fn run_wrk(url: &str, script: Option<&std::path::Path>) -> String {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c50", "-d10s", "--latency"]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd.arg(url).output().expect("wrk runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[poem::handler]
fn bare() -> &'static str {
    "ok"
}

async fn handler() {
    if !wrk_available() {
        println!("robot handler: SKIP, wrk is not installed (apt-get install wrk)");
        return;
    }
    let fake = FakePortal::start(FakePortalConfig::default())
        .await
        .expect("fake portal");
    let running = service(&fake, "1000/1000").await;
    let deal = fake.add_deal("Приём", 3, None);
    // A real robot payload (protocol §4.3) with a fresh event token per request;
    // every call creates an invitation and queues three jobs.
    let script = tempfile::NamedTempFile::new().expect("script");
    let body = format!(
        "code=opros_send_survey&document_id%5B0%5D=crm&document_id%5B1%5D=CCrmDocumentDeal\
         &document_id%5B2%5D=DEAL_{deal}&document_type%5B0%5D=crm&document_type%5B1%5D=CCrmDocumentDeal\
         &document_type%5B2%5D=DEAL&properties%5Breuse_active%5D=N&use_subscription=Y&timeout_duration=0\
         &auth%5Bmember_id%5D={}&auth%5Bapplication_token%5D={}&auth%5Bdomain%5D={}",
        fake.member_id(),
        fake.application_token(),
        fake.domain()
    );
    writeln!(
        script.as_file(),
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
         counter = 0\nrequest = function()\n  counter = counter + 1\n  \
         local body = \"{body}&event_token=\" .. tostring(math.random(1, 1000000000)) .. \"%7C\" .. tostring(counter)\n  \
         return wrk.format(nil, nil, nil, body)\nend"
    )
    .expect("write script");

    let bare_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let bare_cancel = CancellationToken::new();
    let stop = bare_cancel.clone();
    tokio::spawn(async move {
        let _ = poem::Server::new(poem::listener::TcpListener::bind(format!(
            "127.0.0.1:{bare_port}"
        )))
        .run_with_graceful_shutdown(poem::Route::new().at("/", bare), stop.cancelled(), None)
        .await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let url = format!("{}/b24/robot/send-survey", running.base);
    let robot = tokio::task::spawn_blocking({
        let path = script.path().to_owned();
        move || run_wrk(&url, Some(&path))
    })
    .await
    .expect("wrk robot");
    let bare_out = tokio::task::spawn_blocking(move || {
        run_wrk(&format!("http://127.0.0.1:{bare_port}/"), None)
    })
    .await
    .expect("wrk bare");
    let (r_rps, r50, r99) = parse_wrk(&robot);
    let (b_rps, b50, b99) = parse_wrk(&bare_out);
    println!(
        "robot handler: wrk -t2 -c50 -d10s, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  POST /b24/robot/send-survey: {r_rps:.0} req/s, p50 {r50}, p99 {r99}");
    println!("  bare poem handler:           {b_rps:.0} req/s, p50 {b50}, p99 {b99}");
    if b_rps > 0.0 {
        println!("  ratio: {:.2} of the bare handler", r_rps / b_rps);
    }
    bare_cancel.cancel();
    running.cancel.cancel();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        burst().await;
        handler().await;
    });
}
