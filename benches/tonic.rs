//! Unary gRPC calls per second through the sticky stack against
//! `Channel::balance_list` (tower's power-of-two-choices balancer), over the
//! same three in-process tonic servers, in the same run.
//!
//! ```text
//! cargo bench --bench tonic
//! TONIC_BENCH_SECS=10 TONIC_BENCH_CONCURRENCY=128 TONIC_BENCH_ROUNDS=5 cargo bench --bench tonic
//! ```
//!
//! Stacks:
//!
//! - `sticky`: the example's stack, `Sticky` over one lazily connected
//!   `Channel` per server, chain `[Header(x-session-id), Cookie]`, token in
//!   `x-sticky-token` metadata (so every keyed call's response also gets a
//!   freshly sealed token);
//! - `sticky-no-tok`: the same keyed by `x-session-id` alone, no tokens;
//! - `balance_list`: `Channel::balance_list` over the same servers.
//!
//! `TONIC_BENCH_CONCURRENCY` callers (default 64), taking turns with 1,024
//! session ids, send unary calls back to back for `TONIC_BENCH_SECS` seconds (default 5)
//! per stack and round; rounds (default 3) rotate which stack goes first.
//! It prints calls/s per stack and round, and the mean of each with its
//! ratio to `balance_list`. Servers and client share one runtime
//! (`TONIC_BENCH_THREADS` workers, default: every core), so the numbers
//! are for comparing the stacks, not for sizing a deployment.
//!
//! Without `--bench` (as `cargo test --benches` runs it) it makes a short
//! smoke run instead.

#[path = "../examples/tonic_sticky.rs"]
#[allow(dead_code)]
mod demo;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use demo::{
    in_session, pool_config, sticky_transport, CounterClient, RunningServer, SESSION_HEADER,
};
use http::HeaderName;
use hyper::body::Body as HttpBody;
use tokio::task::JoinSet;
use tonic::body::Body;
use tonic::client::GrpcService;
use tonic::transport::Channel;
use tower::Layer;
use tower_sticky::sticky_core::HealthPolicy;
use tower_sticky::{Affinity, Backends, StickyLayer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    calls: u64,
    errors: u64,
    elapsed: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sessions the callers take turns with, so that the keyed stacks spread
/// the load as many clients would (64 keys alone can fall 20/35/9).
const SESSIONS: usize = 1024;

/// `concurrency` callers call `Visit` back to back for `duration`, each
/// call for the next of [`SESSIONS`] sessions.
async fn load<T>(client: &CounterClient<T>, concurrency: usize, duration: Duration) -> Run
where
    T: GrpcService<Body> + Clone + Send + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    T::ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    <T::ResponseBody as HttpBody>::Error: Into<BoxError> + Send,
{
    let start = Instant::now();
    let deadline = start + duration;
    let sessions: Arc<[String]> = (0..SESSIONS).map(|i| format!("session-{i}")).collect();
    let mut workers = JoinSet::new();
    for i in 0..concurrency {
        let mut client = client.clone();
        let sessions = Arc::clone(&sessions);
        workers.spawn(async move {
            let (mut calls, mut errors) = (0u64, 0u64);
            let mut next = i;
            while Instant::now() < deadline {
                let session = &sessions[next % SESSIONS];
                next += concurrency;
                match client.visit(in_session("x".to_owned(), session)).await {
                    Ok(_) => calls += 1,
                    Err(_) => errors += 1,
                }
            }
            (calls, errors)
        });
    }
    let mut run = Run {
        calls: 0,
        errors: 0,
        elapsed: Duration::ZERO,
    };
    while let Some(done) = workers.join_next().await {
        let (calls, errors) = done.expect("a worker panicked");
        run.calls += calls;
        run.errors += errors;
    }
    run.elapsed = start.elapsed();
    run
}

/// The three stacks, by index.
const STACKS: [&str; 3] = ["sticky", "sticky-no-tok", "balance_list"];

async fn bench(secs: f64, concurrency: usize, rounds: usize) -> Result<(), BoxError> {
    let mut servers = Vec::new();
    for name in ["s1", "s2", "s3"] {
        servers.push(RunningServer::start(name).await?);
    }
    // The stack of the example: `[Header(x-session-id), Cookie]`, token in
    // metadata. It seals a token into every keyed call's response, too.
    let (transport, backends) = sticky_transport(&servers, HealthPolicy::default());
    let sticky = CounterClient::new(transport);
    // The same, keyed by x-session-id alone: no token is ever issued.
    let header_only = Backends::new(
        pool_config(HealthPolicy::default()),
        servers.iter().map(RunningServer::backend),
    )?;
    let header_only = CounterClient::new(
        StickyLayer::new()
            .affinity([Affinity::Header(HeaderName::from_static(SESSION_HEADER))])
            .layer(header_only),
    );
    let balanced = CounterClient::new(Channel::balance_list(
        servers.iter().map(RunningServer::endpoint),
    ));

    // Connect and warm up every stack.
    let warm = Duration::from_secs_f64((secs / 5.0).min(1.0));
    load(&sticky, concurrency, warm).await;
    load(&header_only, concurrency, warm).await;
    load(&balanced, concurrency, warm).await;

    let duration = Duration::from_secs_f64(secs);
    let mut rates = [0.0f64; 3];
    for round in 0..rounds {
        println!("round {}:", round + 1);
        // Rotate which stack goes first.
        for k in 0..STACKS.len() {
            let stack = (round + k) % STACKS.len();
            let run = match stack {
                0 => load(&sticky, concurrency, duration).await,
                1 => load(&header_only, concurrency, duration).await,
                _ => load(&balanced, concurrency, duration).await,
            };
            println!(
                "  {:<14} {:>9.0} calls/s  ({} calls, {} errors, {:.2} s)",
                STACKS[stack],
                run.rate(),
                run.calls,
                run.errors,
                run.elapsed.as_secs_f64()
            );
            assert_eq!(run.errors, 0, "calls failed");
            rates[stack] += run.rate();
        }
    }
    let n = rounds as f64;
    println!("mean over {rounds} round(s):");
    for (name, rate) in STACKS.iter().zip(rates) {
        println!(
            "  {name:<14} {:>9.0} calls/s  ratio to balance_list {:.3}",
            rate / n,
            rate / rates[2]
        );
    }
    let per_server: Vec<String> = servers
        .iter()
        .map(|s| format!("{} {}", s.name, s.shard.sessions()))
        .collect();
    println!("sessions per server: {}", per_server.join(", "));
    let requests: Vec<String> = backends
        .status()
        .iter()
        .map(|b| format!("{} {}", b.name.as_str(), b.counters.requests))
        .collect();
    println!("sticky requests per backend: {}", requests.join(", "));
    for server in servers {
        server.stop().await?;
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let full = std::env::args().any(|a| a == "--bench");
    let secs = if full {
        env("TONIC_BENCH_SECS", 5.0)
    } else {
        0.2
    };
    let concurrency = env("TONIC_BENCH_CONCURRENCY", 64);
    let rounds = if full {
        env("TONIC_BENCH_ROUNDS", 3)
    } else {
        1
    };
    let threads = env(
        "TONIC_BENCH_THREADS",
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    );
    println!(
        "tonic unary calls: sticky stacks vs balance_list, 3 servers, {concurrency} concurrent callers over {SESSIONS} sessions, {secs} s per stack and round, {threads} runtime threads"
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?
        .block_on(bench(secs, concurrency.max(1), rounds.max(1)))
}
