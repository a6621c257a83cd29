//! The long soak: drives the gateway with thousands of sessions while its
//! backends are stopped, restarted, drained, reweighted, disabled, added
//! and removed, and counts misroutes and lost requests.
//!
//! ```text
//! cargo build --release --example gateway
//! cargo run --release --example soak -- --requests 1000000
//! ```
//!
//! It spawns the gateway binary built next to it (same profile) over demo
//! backends it serves itself, all on loopback, and stops by itself after
//! `--requests` or `--seconds`, whichever comes first. The engine is the
//! one the test suite's short soak uses (`tests/support/soak.rs`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use clap::Parser;

/// Soak the gateway and count misroutes and lost requests.
#[derive(Parser, Debug)]
struct Args {
    /// Sessions, each with its own cookie jar.
    #[arg(long, default_value_t = 5_000)]
    sessions: usize,
    /// Requests under way at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 1_800)]
    seconds: u64,
    /// Seconds between two changes to the backends.
    #[arg(long, default_value_t = 2.0)]
    change_every: f64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let report = support::soak::run(support::soak::Options {
        sessions: args.sessions,
        concurrency: args.concurrency,
        duration: Duration::from_secs(args.seconds),
        max_requests: args.requests,
        change_every: Duration::from_secs_f64(args.change_every),
    })
    .await;
    let per_second = report.requests as f64 / report.elapsed.as_secs_f64();
    println!(
        "{} requests in {:.1} s ({per_second:.0}/s), {} sessions, {} changes",
        report.requests,
        report.elapsed.as_secs_f64(),
        args.sessions,
        report.changes.len()
    );
    println!(
        "misroutes: {}   lost: {}   documented 502/503: {}   sessions moved: {}",
        report.misroutes, report.lost, report.documented_errors, report.moves
    );
    println!(
        "backend connections left open after the clients were done: {}",
        report.backend_connections_left
    );
    for example in &report.examples {
        println!("  {example}");
    }
    if report.misroutes + report.lost > 0 || report.backend_connections_left > 0 {
        std::process::exit(1);
    }
}
