//! Build time and size of the realistic, fully answered report.
//!
//! Run: `cargo bench --bench report`. Prints median and p95 build time, PDF size and pages.

use std::time::{Duration, Instant};

use opros::report::{render, sample::sample_input};

const WARM_UP: usize = 10;
const RUNS: usize = 200;

fn main() {
    let input = sample_input();
    for _ in 0..WARM_UP {
        if let Err(e) = render(&input) {
            eprintln!("render failed: {e}");
            std::process::exit(1);
        }
    }
    let mut times = Vec::with_capacity(RUNS);
    let mut last = None;
    for _ in 0..RUNS {
        let start = Instant::now();
        let report = render(&input);
        times.push(start.elapsed());
        last = Some(report);
    }
    let report = match last {
        Some(Ok(report)) => report,
        Some(Err(e)) => {
            eprintln!("render failed: {e}");
            std::process::exit(1);
        }
        None => return,
    };
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let percentile = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    println!(
        "report: {RUNS} runs, median {:.2} ms, p95 {:.2} ms, {:.1} KB, {} pages",
        ms(percentile(50)),
        ms(percentile(95)),
        report.pdf.len() as f64 / 1024.0,
        report.pages
    );
}
