//! SIGTERM: the gateway stops accepting, finishes requests under way, and
//! exits cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

fn gateway() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join("examples")
        .join(format!("gateway{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "build it with `cargo build --example gateway` (cargo test --workspace builds it)"
    );
    path
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Polls until `check` holds, for at most 10 s.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_under_way() {
    // A backend that holds its answer until released.
    let arrived = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let app = {
        let (arrived, release) = (Arc::clone(&arrived), Arc::clone(&release));
        Router::new().route(
            "/slow",
            get(move || async move {
                arrived.notify_one();
                release.notified().await;
                "finished"
            }),
        )
    };
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(backend, app).await.unwrap() });

    let (listen, admin) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(gateway())
        .args([
            "--listen",
            &listen.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .args(["--backend", &format!("slow=http://{backend_addr}")])
        .env("STICKY_SECRET", "shutdown test secret, 32 bytes..")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    until("the gateway to listen", async || {
        TcpStream::connect(listen).await.is_ok()
    })
    .await;

    // A request under way...
    let mut client = TcpStream::connect(listen).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    arrived.notified().await;

    // ...when SIGTERM comes.
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    until("the listener to close", async || {
        TcpStream::connect(listen).await.is_err()
    })
    .await;

    release.notify_one();
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("finished"), "{answer}");

    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the gateway exits once idle")
        .unwrap();
    assert!(exit.success(), "{exit}");
}
