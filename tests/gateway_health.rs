//! Active health checks (`--health-check`), end to end: demo backends
//! served in this process with a health endpoint the test controls, the
//! gateway binary as a child process, and browsers that keep cookie jars.
//!
//! Build the gateway first: `cargo build --example gateway` (`cargo test
//! --workspace` builds it too).

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::routing::get;
use support::*;

/// What a test makes a backend do.
#[derive(Default)]
struct Trouble {
    /// `/check` answers 503 (the application still serves).
    failing: AtomicBool,
    /// Nothing is answered: requests wait for ever.
    hung: AtomicBool,
    /// Requests held so.
    held: AtomicUsize,
}

/// A demo backend with a health endpoint at `/check`, and the switch
/// that breaks it.
async fn troubled(name: &str) -> (Backend, Arc<Trouble>) {
    let trouble = Arc::new(Trouble::default());
    let check = {
        let trouble = Arc::clone(&trouble);
        move || async move {
            if trouble.failing.load(Ordering::SeqCst) {
                (StatusCode::SERVICE_UNAVAILABLE, "failing\n")
            } else {
                (StatusCode::OK, "ok\n")
            }
        }
    };
    let hang = {
        let trouble = Arc::clone(&trouble);
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let trouble = Arc::clone(&trouble);
            async move {
                if trouble.hung.load(Ordering::SeqCst) {
                    trouble.held.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                next.run(request).await
            }
        }
    };
    let app = axum::Router::new()
        .route("/check", get(check))
        .merge(support::demo::router(name))
        .layer(axum::middleware::from_fn(hang));
    let backend = Backend::serve(name, "127.0.0.1:0".parse().unwrap(), app).await;
    (backend, trouble)
}

async fn three_troubled() -> (Vec<Backend>, Vec<Arc<Trouble>>) {
    let mut servers = Vec::new();
    let mut troubles = Vec::new();
    for name in ["b1", "b2", "b3"] {
        let (server, trouble) = troubled(name).await;
        servers.push(server);
        troubles.push(trouble);
    }
    (servers, troubles)
}

/// A gateway over `servers` checking `/check` with the flags `settings`.
async fn checking(servers: &[Backend], settings: &[&str]) -> Gateway {
    let mut args = vec!["--health-check", "/check"];
    args.extend_from_slice(settings);
    Gateway::start(&servers.iter().collect::<Vec<_>>(), &args).await
}

/// Waits until the admin API shows `name` in `state`, with its checks
/// `failing` or not.
async fn wait_for(gateway: &Gateway, name: &str, state: &str, failing: bool) {
    wait_until(
        &format!("{name} to be {state} with failing_checks {failing}"),
        || async {
            let list = gateway.list().await;
            list[name]["state"] == state && list[name]["failing_checks"] == failing
        },
    )
    .await;
}

/// A backend whose health endpoint fails is taken out with no request of
/// a client failing: its sessions move with a new cookie, new sessions
/// go elsewhere, and what an operator set meanwhile (a drain) holds when
/// its checks pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_checks_move_sessions_and_a_passing_backend_keeps_its_drain() {
    let (servers, troubles) = three_troubled().await;
    let gateway = checking(
        &servers,
        &[
            "--health-interval",
            "0.05",
            "--health-fall",
            "2",
            "--health-rise",
            "2",
        ],
    )
    .await;
    let mut sessions = new_sessions(&gateway, 15).await;

    troubles[0].failing.store(true, Ordering::SeqCst);
    wait_for(&gateway, "b1", "unhealthy", true).await;
    let list = gateway.list().await;
    assert_eq!(list["b1"]["counters"]["failures"], 0, "{list:?}");
    assert!(
        gateway.log().contains("backend failing its health checks"),
        "{}",
        gateway.log()
    );

    for (browser, home) in &mut sessions {
        let before = browser.jar.get(STICKY).cloned();
        let reply = browser.get("/").await;
        let (now_on, visits) = reply.visit();
        if home == "b1" {
            assert_ne!(now_on, "b1", "{reply:?}");
            assert_eq!(visits, 1, "the demo session starts over: {reply:?}");
            assert_ne!(reply.sticky_cookie(), before.as_deref(), "{reply:?}");
            assert!(reply.sticky_cookie().is_some(), "{reply:?}");
        } else {
            assert_eq!((now_on, visits), (home.clone(), 2), "{reply:?}");
            assert!(reply.sticky_cookie().is_none(), "{reply:?}");
        }
    }
    let homes = homes_of_new_clients(&gateway, 30).await;
    assert!(!homes.contains_key("b1"), "{homes:?}");

    // Enable does not overrule failing checks; a drain holds through them.
    let enabled = gateway.post("/backends/b1/enable").await;
    assert_eq!(
        (&enabled["state"], &enabled["failing_checks"]),
        (&json!("unhealthy"), &json!(true))
    );
    let drained = gateway.post("/backends/b1/drain").await;
    assert_eq!(
        (&drained["state"], &drained["admin_state"]),
        (&json!("unhealthy"), &json!("draining")),
        "the drain shows beside the checks' verdict: {drained}"
    );
    let (_, _, metrics) = gateway.admin_text(Method::GET, "/metrics", "").await;
    assert!(
        metrics.contains("sticky_backend_failing_checks{backend=\"b1\"} 1\n")
            && metrics.contains("sticky_backend_failing_checks{backend=\"b2\"} 0\n"),
        "{metrics}"
    );
    troubles[0].failing.store(false, Ordering::SeqCst);
    wait_for(&gateway, "b1", "draining", false).await;
    assert!(
        gateway
            .log()
            .contains("backend passing its health checks again"),
        "{}",
        gateway.log()
    );
    let homes = homes_of_new_clients(&gateway, 30).await;
    assert!(!homes.contains_key("b1"), "still draining: {homes:?}");

    gateway.post("/backends/b1/undrain").await;
    let homes = homes_of_new_clients(&gateway, 30).await;
    assert_eq!(homes.get("b1"), Some(&10), "{homes:?}");
}

/// A backend that stops answering, its connections still accepted, costs
/// its sessions' requests the backend timeout (60 s) under passive health
/// alone. With checks it is out within a few check timeouts, its sessions
/// move at once, and it takes sessions again when it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_is_taken_out_before_its_sessions_wait_on_it() {
    let (servers, troubles) = three_troubled().await;
    let gateway = checking(
        &servers,
        &[
            "--health-interval",
            "0.1",
            "--health-timeout",
            "0.2",
            "--health-fall",
            "2",
            "--health-rise",
            "1",
        ],
    )
    .await;
    let sessions = new_sessions(&gateway, 15).await;

    troubles[1].hung.store(true, Ordering::SeqCst);
    wait_for(&gateway, "b2", "unhealthy", true).await;
    assert!(
        gateway.log().contains("no answer within"),
        "the log says why: {}",
        gateway.log()
    );
    // Each request is held to the browser's 10 s deadline, far below the
    // backend timeout.
    let moved = in_parallel(
        sessions
            .into_iter()
            .filter(|(_, home)| home == "b2")
            .map(|(browser, _)| browser),
        5,
        |mut browser| async move { browser.get("/").await.visit() },
    )
    .await;
    assert_eq!(moved.len(), 5);
    for (now_on, visits) in moved {
        assert!(now_on != "b2" && visits == 1, "{now_on} visit {visits}");
    }

    troubles[1].hung.store(false, Ordering::SeqCst);
    wait_for(&gateway, "b2", "active", false).await;
    let homes = homes_of_new_clients(&gateway, 30).await;
    assert_eq!(homes.get("b2"), Some(&10), "{homes:?}");
}

/// Each backend is checked on its own timer: one that hangs, its check
/// waiting out a long timeout, does not hold up finding another that
/// fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_does_not_hold_up_the_checks_of_the_others() {
    let (servers, troubles) = three_troubled().await;
    let gateway = checking(
        &servers,
        &[
            "--health-interval",
            "0.05",
            "--health-timeout",
            "60",
            "--health-fall",
            "2",
        ],
    )
    .await;
    troubles[1].hung.store(true, Ordering::SeqCst);
    let b2 = Arc::clone(&troubles[1]);
    wait_until("a check of b2 to be under way", || {
        let b2 = Arc::clone(&b2);
        async move { b2.held.load(Ordering::SeqCst) > 0 }
    })
    .await;
    troubles[2].failing.store(true, Ordering::SeqCst);
    // Within the 10 s any wait here is given, far below b2's check timeout.
    wait_for(&gateway, "b3", "unhealthy", true).await;
    let list = gateway.list().await;
    assert_eq!(
        (&list["b2"]["state"], &list["b1"]["state"]),
        (&json!("active"), &json!("active")),
        "{list:?}"
    );
}

/// A backend added through the admin API while checks run takes no
/// session before its first check passes: sessions placed on a server
/// not yet ready would have to move again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_added_while_serving_waits_for_its_first_check() {
    let (servers, _) = three_troubled().await;
    let gateway = checking(&servers, &["--health-interval", "0.05"]).await;
    let (b4, trouble) = troubled("b4").await;
    trouble.failing.store(true, Ordering::SeqCst);
    let body = format!(r#"{{"name": "b4", "url": "{}"}}"#, b4.url());
    let (status, added) = gateway.admin(Method::POST, "/backends", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!(
        (
            &added["state"],
            &added["admin_state"],
            &added["failing_checks"]
        ),
        (&json!("unhealthy"), &json!("active"), &json!(true)),
        "{added}"
    );
    let homes = homes_of_new_clients(&gateway, 40).await;
    assert!(!homes.contains_key("b4"), "{homes:?}");
    let list = gateway.list().await;
    assert_eq!(
        list["b4"]["failing_checks"], true,
        "still failing: {list:?}"
    );

    trouble.failing.store(false, Ordering::SeqCst);
    wait_for(&gateway, "b4", "active", false).await;
    let homes = homes_of_new_clients(&gateway, 40).await;
    assert_eq!(homes.get("b4"), Some(&10), "{homes:?}");
}
