//! SIGTERM: the gateway stops accepting, finishes requests under way,
//! closes idle connections (HTTP/2 with a GOAWAY), and exits cleanly; a
//! connection left halfway holds it up no longer than the client timeout.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::sync::Notify;

mod support;

use support::{announced, gateway_binary as gateway, http2_connection, wait_until};

/// Starts the gateway with `args` besides its addresses (both on free
/// ports); returns it, its address and its admin address.
async fn spawn_gateway(args: &[&str]) -> (Child, SocketAddr, SocketAddr) {
    spawn_logging(args, "warn", Stdio::null()).await
}

/// Like `spawn_gateway`, logging at `level` to `log`.
async fn spawn_logging(args: &[&str], level: &str, log: Stdio) -> (Child, SocketAddr, SocketAddr) {
    let mut child = tokio::process::Command::new(gateway())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(args)
        .env("STICKY_SECRET", "shutdown test secret, 32 bytes..")
        .env("RUST_LOG", level)
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (listen, admin) = announced(&mut child)
        .await
        .expect("the gateway exited before it listened");
    (child, listen, admin)
}

/// Sends `request` on a new connection to `addr` and reads until the
/// answer ends with `end`; checks it is a 200 and returns the connection,
/// kept alive.
async fn answered(addr: SocketAddr, request: &[u8], end: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answer.ends_with(end) {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "closed before answering: {answer:?}");
        answer.extend_from_slice(&buffer[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    stream
}

/// Sends SIGTERM to `child`.
fn terminate(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Sends SIGTERM to `child` and waits until it has stopped listening on
/// `listen`: the signal has been taken.
async fn terminate_and_wait_for_the_listener(child: &Child, listen: SocketAddr) {
    terminate(child);
    wait_until("the listener to close", || async move {
        TcpStream::connect(listen).await.is_err()
    })
    .await;
}

/// Waits up to 10 s for `child` to exit, and checks it exited cleanly;
/// `when` says what it should have exited after.
async fn exits_cleanly(child: &mut Child, when: &str) {
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap_or_else(|_| panic!("the gateway exits {when}"))
        .unwrap();
    assert!(exit.success(), "{exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_under_way() {
    // A backend that holds its answer until released.
    let arrived = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let app = {
        let (arrived, release) = (Arc::clone(&arrived), Arc::clone(&release));
        Router::new()
            .route(
                "/slow",
                get(move || async move {
                    arrived.notify_one();
                    release.notified().await;
                    "finished"
                }),
            )
            .route("/fast", get(|| async { "fast" }))
    };
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(backend, app).await.unwrap() });

    let backend = format!("slow=http://{backend_addr}");
    let (mut child, listen, _admin) = spawn_gateway(&["--backend", &backend]).await;

    // Two idle kept-alive connections, HTTP/1.1 and HTTP/2, each having
    // had an answer...
    let mut idle = answered(listen, b"GET /fast HTTP/1.1\r\nHost: test\r\n\r\n", b"fast").await;
    let (mut http2, http2_closed) = http2_connection(listen).await;
    let request = http::Request::get(format!("http://{listen}/fast"))
        .body(http_body_util::Full::default())
        .unwrap();
    let reply = http2.send_request(request).await.unwrap();
    assert_eq!(reply.status(), http::StatusCode::OK);

    // ...a request under way...
    let mut client = TcpStream::connect(listen).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    arrived.notified().await;

    // ...when SIGTERM comes.
    terminate_and_wait_for_the_listener(&child, listen).await;

    release.notify_one();
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("finished"), "{answer}");

    // The idle connections were closed, not left to the client timeout
    // (30 s): HTTP/2 with a GOAWAY, which ends the client's side without
    // an error.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest))
        .await
        .expect("the idle HTTP/1.1 connection is closed")
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    let http2_ended = tokio::time::timeout(Duration::from_secs(10), http2_closed)
        .await
        .expect("the HTTP/2 connection is closed")
        .unwrap();
    assert!(http2_ended.is_ok(), "{http2_ended:?}");

    exits_cleanly(&mut child, "once idle").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_gone_away_does_not_turn_shutdown_into_a_crash() {
    // Its standard error a pipe whose reader has gone, as a terminal
    // closed under it or a log collector stopped: every write fails.
    // The access log's own thread writes there too.
    let access_log = ["--access-log"];
    let (mut child, listen, _admin) = spawn_logging(&access_log, "info", Stdio::piped()).await;
    drop(child.stderr.take());
    answered(listen, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", b"\n").await;
    terminate_and_wait_for_the_listener(&child, listen).await;
    exits_cleanly(
        &mut child,
        "after SIGTERM, with nothing to write its log to",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_admin_connection_does_not_hold_up_shutdown() {
    let (mut child, _listen, admin) = spawn_gateway(&["--client-timeout", "1"]).await;

    // Half a request head on the admin listener, then nothing more; and
    // an idle kept-alive admin connection, having had an answer.
    let mut stalled = TcpStream::connect(admin).await.unwrap();
    stalled
        .write_all(b"GET /backends HTTP/1.1\r\nHost: test\r\n")
        .await
        .unwrap();
    let _idle = answered(admin, b"GET /backends HTTP/1.1\r\nHost: test\r\n\r\n", b"]").await;

    // The stalled one is cut after the client timeout, like any client's,
    // and then the gateway is done.
    terminate(&child);
    exits_cleanly(&mut child, "within the client timeout").await;
}

/// A WebSocket open at SIGTERM is a request under way: it goes on until
/// either end closes it (within the time shutdown gives requests), and
/// the gateway exits once it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_an_open_websocket_to_finish() {
    use tokio_tungstenite::tungstenite;
    use tungstenite::client::IntoClientRequest;

    let backend = support::Backend::start("b1").await;
    let backend = format!("b1={}", backend.url());
    let (mut child, listen, _admin) = spawn_gateway(&["--backend", &backend]).await;

    // The blocking client (see the WebSocket test in gateway_e2e.rs) is
    // told when to send its second message.
    let (opened, is_open) = std::sync::mpsc::channel::<()>();
    let (go, proceed) = std::sync::mpsc::channel::<()>();
    let client = tokio::task::spawn_blocking(move || {
        let request = format!("ws://{listen}/ws").into_client_request().unwrap();
        let stream = std::net::TcpStream::connect(listen).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (mut socket, _) = tungstenite::client(request, stream).unwrap();
        let mut echo = |text: &str| -> Result<String, tungstenite::Error> {
            socket.send(tungstenite::Message::text(text))?;
            loop {
                match socket.read()? {
                    tungstenite::Message::Text(echo) => return Ok(echo.as_str().to_owned()),
                    tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
                    other => panic!("unexpected message {other:?}"),
                }
            }
        };
        let before = echo("before");
        opened.send(()).unwrap();
        proceed.recv().unwrap();
        let after = echo("after");
        let _ = socket.close(None);
        (before, after)
    });
    tokio::task::spawn_blocking(move || is_open.recv())
        .await
        .unwrap()
        .expect("the WebSocket opened");

    terminate_and_wait_for_the_listener(&child, listen).await;
    go.send(()).unwrap();
    let (before, after) = client.await.unwrap();
    assert!(before.unwrap().contains("before"));
    let after = after.expect("the tunnel outlives the signal");
    assert!(after.contains("after"), "{after}");

    exits_cleanly(&mut child, "once the WebSocket is closed").await;
}

/// A second signal (a second Ctrl-C) stops the gateway without waiting for
/// requests under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once() {
    let arrived = Arc::new(Notify::new());
    let app = {
        let arrived = Arc::clone(&arrived);
        Router::new().route(
            "/never",
            get(move || async move {
                arrived.notify_one();
                std::future::pending::<()>().await;
            }),
        )
    };
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(backend, app).await.unwrap() });
    let backend = format!("never=http://{backend_addr}");
    let (mut child, listen, _admin) = spawn_gateway(&["--backend", &backend]).await;

    let mut client = TcpStream::connect(listen).await.unwrap();
    client
        .write_all(b"GET /never HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    arrived.notified().await;
    terminate_and_wait_for_the_listener(&child, listen).await;
    // The first signal waits for the request, for up to 30 s; the second
    // does not.
    terminate(&child);
    exits_cleanly(&mut child, "at the second signal").await;
}
