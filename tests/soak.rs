//! A short soak in the normal suite: 20 seconds, 400 sessions, a change
//! to the backends every second; zero misroutes and zero lost requests,
//! and no backend connection left open once the clients are done.
//! (`cargo run --release --example soak` runs the long one.)

mod support;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_soak_has_no_misroutes_and_loses_nothing() {
    let report = support::soak::run(support::soak::Options {
        sessions: 400,
        concurrency: 32,
        duration: Duration::from_secs(20),
        max_requests: 1_000_000,
        change_every: Duration::from_secs(1),
    })
    .await;
    println!("{report:#?}");
    assert!(report.requests > 1_000, "the soak barely ran: {report:#?}");
    assert!(report.changes.len() >= 10, "{report:#?}");
    assert_eq!(report.misroutes, 0, "{report:#?}");
    assert_eq!(report.lost, 0, "{report:#?}");
    assert_eq!(
        report.backend_connections_left, 0,
        "backend connections outlived their idle timeout: {report:#?}"
    );
}
