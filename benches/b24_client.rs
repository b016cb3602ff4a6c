//! Sustained call rate through the client against the fake portal's leaky bucket.
//! For each plan's limit: use up the burst, then count calls completed in a fixed
//! window and the `QUERY_LIMIT_EXCEEDED` answers. Prints figures; asserts nothing.
//! With `OPROS_BENCH_POSTGRES_URL` (a server where databases may be created) it also
//! runs two clients sharing their buckets in PostgreSQL, as two instances would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opros::bitrix24::{B24Client, ClientConfig, RateLimit, SharedBucket, Target};
use opros::db::rate_bucket::DbRateBucket;
use opros::secret::Secret;
use opros::testing::{FakePortal, FakePortalConfig, MemoryTokenStore};
use serde_json::json;

const WORKERS: usize = 32;
const WINDOW: Duration = Duration::from_secs(20);

type BoxError = Box<dyn std::error::Error>;

/// A fresh database on the server named by `OPROS_BENCH_POSTGRES_URL`, migrated.
async fn bench_database(admin_url: &str) -> Result<String, BoxError> {
    let url = opros::testing::new_postgres_database(admin_url, "opros_bench").await?;
    opros::db::migrate(&opros::db::connect(&url).await?).await?;
    Ok(url)
}

/// `instances` clients of one portal; with a database URL, each has its own
/// connection pool to the shared buckets.
async fn measure(
    per_sec: f64,
    burst: u32,
    instances: usize,
    shared_db: Option<&str>,
) -> Result<(), BoxError> {
    let fake = FakePortal::start(FakePortalConfig {
        rate: (per_sec, burst),
        ..FakePortalConfig::default()
    })
    .await?;
    let store = Arc::new(MemoryTokenStore::new());
    store.insert(&fake.member_id(), fake.issue_portal_auth(1));
    let mut clients = Vec::new();
    for _ in 0..instances {
        let bucket = match shared_db {
            Some(url) => DbRateBucket::for_shared_db(&opros::db::connect(url).await?)
                .map(|b| Arc::new(b) as Arc<dyn SharedBucket>),
            None => None,
        };
        clients.push(B24Client::with_bucket(
            ClientConfig {
                client_id: Some(fake.client_id()),
                client_secret: Some(Secret::new(fake.client_secret())),
                rate: RateLimit { per_sec, burst },
                ..ClientConfig::default()
            },
            store.clone(),
            bucket,
        )?);
    }
    let target = Target::Portal {
        member_id: fake.member_id(),
    };
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        let (client, target) = (clients[worker % instances].clone(), target.clone());
        let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.call(&target, "profile", json!({})).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let started = Instant::now();
    // The burst goes through at once; the steady state starts after it.
    while done.load(Ordering::Relaxed) < u64::from(burst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let burst_time = started.elapsed();
    let at_start = done.load(Ordering::Relaxed);
    let window_start = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let in_window = done.load(Ordering::Relaxed) - at_start;
    let elapsed = window_start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let achieved = in_window as f64 / elapsed;
    let bounced = fake.calls().iter().filter(|c| c.status == 503).count();
    println!(
        "rate {per_sec}/{burst}, {instances} client(s){}: burst of {burst} in {:.2} s; steady {achieved:.3} calls/s over {elapsed:.1} s = {:.1} % of allowed; 503 answers: {bounced}; client errors: {}",
        if shared_db.is_some() {
            " sharing PostgreSQL buckets"
        } else {
            ""
        },
        burst_time.as_secs_f64(),
        achieved / per_sec * 100.0,
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "b24_client bench: {WORKERS} concurrent callers, window {} s, {} CPUs",
        WINDOW.as_secs(),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    runtime.block_on(async {
        measure(2.0, 50, 1, None).await?;
        measure(5.0, 250, 1, None).await?;
        match std::env::var("OPROS_BENCH_POSTGRES_URL") {
            Ok(admin_url) => {
                let url = bench_database(&admin_url).await?;
                measure(2.0, 50, 2, Some(&url)).await?;
                measure(5.0, 250, 2, Some(&url)).await
            }
            Err(_) => {
                println!("shared buckets: skipped (OPROS_BENCH_POSTGRES_URL is not set)");
                Ok(())
            }
        }
    })
}
