//! The outbox's recovery after a crash (issue 15), with real `opros` processes against
//! the fake portal. Prints figures over several runs; asserts nothing.
//!
//! 1. Baseline: a healthy service, submit → timeline comment.
//! 2. Restart after SIGKILL on SQLite: the service is killed in the middle of the
//!    comment's call during an outage, the portal recovers, the service is started
//!    again; from its `/healthz` answering to the comment (zero when the worker
//!    delivered it before the first answer), from its start to the comment, and their
//!    ratios to 1.
//! 3. With `OPROS_BENCH_POSTGRES_URL` (a server where databases may be created): the
//!    restart on PostgreSQL, and the takeover of a killed instance's leased jobs by a
//!    surviving one, from the portal's recovery to all delivered, against the lease.
//!
//! The scenarios are `opros::testing::recovery`'s, the ones tests/api/recovery.rs
//! checks against the targets.

use std::path::Path;
use std::time::Duration;

use opros::testing::new_postgres_database;
use opros::testing::recovery::{healthy_delivery, restart_after_sigkill, takeover};

const RUNS: usize = 5;
/// Generous: the bench records a slow run instead of stopping at the target.
const DELIVER_WITHIN: Duration = Duration::from_secs(120);

type BoxError = Box<dyn std::error::Error>;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_opros"))
}

/// Min / median / max in milliseconds.
fn spread(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match (
        samples.first(),
        samples.get(samples.len() / 2),
        samples.last(),
    ) {
        (Some(min), Some(median), Some(max)) => (ms(*min), ms(*median), ms(*max)),
        _ => (0.0, 0.0, 0.0),
    }
}

fn print_spread(what: &str, samples: Vec<Duration>) -> f64 {
    let (min, median, max) = spread(samples);
    println!("  {what}: min {min:.0} ms, median {median:.0} ms, max {max:.0} ms");
    median
}

/// A database for one run: a fresh SQLite file in `dir`, or a fresh PostgreSQL one.
async fn database(postgres: Option<&str>, dir: &Path) -> Result<String, BoxError> {
    Ok(match postgres {
        Some(admin_url) => new_postgres_database(admin_url, "opros_bench").await?,
        None => format!("sqlite://{}/opros.db?mode=rwc", dir.display()),
    })
}

/// The baseline and the restart, `RUNS` times each, on one backend.
async fn restart(backend: &str, postgres: Option<&str>) -> Result<(), BoxError> {
    let (mut baseline, mut ready) = (Vec::new(), Vec::new());
    let (mut delivered, mut from_start) = (Vec::new(), Vec::new());
    let mut duplicates = 0;
    for _ in 0..RUNS {
        let dir = tempfile::tempdir()?;
        let url = database(postgres, dir.path()).await?;
        let healthy = healthy_delivery(bin(), &url, dir.path(), DELIVER_WITHIN).await?;
        baseline.push(healthy.submit_to_comment);
        duplicates += healthy.comments.saturating_sub(1);

        let dir = tempfile::tempdir()?;
        let url = database(postgres, dir.path()).await?;
        let run = restart_after_sigkill(bin(), &url, dir.path(), DELIVER_WITHIN).await?;
        ready.push(run.ready_in);
        delivered.push(run.ready_to_comment);
        from_start.push(run.start_to_comment);
        duplicates += run.comments.saturating_sub(1);
    }
    println!("[{backend}] {RUNS} runs each");
    let base = print_spread("baseline, healthy service: submit → comment", baseline);
    print_spread("restart: process start → /healthz", ready);
    let after = print_spread("restart after SIGKILL: ready → pending comment", delivered);
    let whole = print_spread(
        "restart after SIGKILL: process start → pending comment",
        from_start,
    );
    let base = base.max(f64::MIN_POSITIVE);
    println!(
        "  ratio to the baseline (medians): ready → comment {:.2}, start → comment {:.2}; duplicates: {duplicates}",
        after / base,
        whole / base
    );
    Ok(())
}

async fn takeovers(admin_url: &str) -> Result<(), BoxError> {
    let (mut delivered, mut held) = (Vec::new(), Vec::new());
    let mut duplicates = 0;
    for _ in 0..RUNS {
        let dir = tempfile::tempdir()?;
        let url = new_postgres_database(admin_url, "opros_bench").await?;
        let run = takeover(bin(), &url, dir.path(), DELIVER_WITHIN).await?;
        delivered.push(run.recovery_to_delivered);
        held.push(run.held_by_killed);
        duplicates += run.duplicates;
    }
    let lease = Duration::from_millis(opros::outbox::jobs::LEASE_MS.unsigned_abs());
    println!(
        "[postgres] takeover by a surviving instance, {RUNS} runs (6 robot runs + 6 completions; open jobs last leased by the killed one: {held:?})"
    );
    let median = print_spread("portal recovery → all delivered", delivered);
    println!(
        "  lease time {} ms; median / lease: {:.2}; duplicates: {duplicates}",
        lease.as_millis(),
        median / (lease.as_secs_f64() * 1000.0)
    );
    Ok(())
}

async fn all() -> Result<(), BoxError> {
    restart("sqlite", None).await?;
    let Ok(admin_url) = std::env::var("OPROS_BENCH_POSTGRES_URL") else {
        println!("postgres: skipped (OPROS_BENCH_POSTGRES_URL is not set)");
        return Ok(());
    };
    restart("postgres", Some(&admin_url)).await?;
    takeovers(&admin_url).await
}

fn main() -> Result<(), BoxError> {
    println!(
        "recovery bench: {} CPUs, binary {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        bin().display()
    );
    tokio::runtime::Runtime::new()?.block_on(all())
}
