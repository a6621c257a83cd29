//! The gateway's timeouts, against clients and backends that stop halfway:
//! a client that sends nothing or never finishes its request head, an
//! idle kept-alive connection (HTTP/1.1 or HTTP/2), a client that stops
//! sending its request body or reading its response, a backend that never
//! answers, one that stops reading a request body, one that stops
//! mid-body; a backend connection left unused; and requests in progress
//! for longer than a timeout that must not count against them: an
//! upload, a backend slower than the client timeout, a slow but steady
//! reader and a quiet WebSocket. The admin listener's connections are
//! held to the client timeout too. HTTP/2 clients frame by frame are in
//! `gateway_http2.rs`.
//!
//! Timers never fire early, so each test also checks that nothing was cut
//! before its timeout.
//!
//! Build the gateway first: `cargo build --example gateway`.

mod support;

use support::*;
use tokio::io::AsyncWriteExt;

/// A backend that reads each request head, then holds the connection
/// and says nothing.
async fn silent_backend(name: &str) -> Backend {
    raw_backend(name, |stream| async move {
        let _ = tokio::time::sleep(DEADLINE * 2).await;
        drop(stream);
    })
    .await
}

/// A backend that answers "got N bytes" once it has a request's whole
/// body.
async fn body_size_backend() -> Backend {
    let app = axum::Router::new()
        .fallback(|body: axum::body::Bytes| async move { format!("got {} bytes", body.len()) });
    Backend::serve("b1", "127.0.0.1:0".parse().unwrap(), app).await
}

/// Sends `request` on a new connection, then reads as `read_to_close`
/// does; the answer as text.
async fn send_and_read_to_close(gateway: &Gateway, request: &[u8]) -> (String, bool) {
    let mut client = TcpStream::connect(gateway.addr).await.unwrap();
    client.write_all(request).await.unwrap();
    let (got, closed) = read_to_close(&mut client).await;
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// Reads until the peer closes (or `DEADLINE`); returns what came and
/// whether the peer closed.
async fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .is_ok();
    (got, closed)
}

/// Opens a connection to `addr` for each of `sends` and sends it; then
/// checks that each is closed, by a client timeout of 1 s and not before.
/// Returns what each got, as text.
async fn assert_cut_by_the_timeout(addr: SocketAddr, sends: &[&[u8]]) -> Vec<String> {
    let started = Instant::now();
    let mut stalled = Vec::new();
    for sent in sends {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        stalled.push((sent, stream));
    }
    let mut answers = Vec::new();
    for (sent, mut stream) in stalled {
        let (got, closed) = read_to_close(&mut stream).await;
        let sent = String::from_utf8_lossy(sent);
        assert!(closed, "a client that sent {sent:?} to {addr} was kept");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "cut after {:?}, before the 1 s timeout",
            started.elapsed()
        );
        answers.push(String::from_utf8_lossy(&got).into_owned());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_disconnected_after_the_client_timeout() {
    let backend = Backend::start("b1").await;
    let gateway = Gateway::start(&[&backend], &["--client-timeout", "1"]).await;

    // Nothing at all, a few bytes of HTTP/2's preface, half an HTTP/1.1
    // request head, and a whole HTTP/2 preface with the client's (empty)
    // SETTINGS frame; then nothing more.
    assert_cut_by_the_timeout(
        gateway.addr,
        &[
            b"",
            b"PRI * HTTP/2.0",
            b"GET / HTTP/1.1\r\nHost: test\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
        ],
    )
    .await;

    // A whole request, answered; then the connection sits idle. Its
    // idleness starts as the gateway ends the answer, after the request
    // went out and before the answer is read here: the close can be no
    // earlier than 1 s after the first of those.
    let mut idle = TcpStream::connect(gateway.addr).await.unwrap();
    let sent = Instant::now();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answer.windows(3).any(|w| w == b"b1 ") {
        let n = tokio::time::timeout(DEADLINE, idle.read(&mut buffer))
            .await
            .expect("no answer in time")
            .unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buffer[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let (rest, closed) = read_to_close(&mut idle).await;
    assert!(closed, "an idle kept-alive connection was kept");
    assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "cut {:?} after the request, before the 1 s timeout",
        sent.elapsed()
    );

    gateway.assert_keeps_serving().await;
}

/// A first request head that stops part way is cut at the client timeout,
/// as an idle connection is; not given a second timeout to close
/// politely, which an HTTP/1.1 client without a request in progress has
/// no part in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_first_request_head_is_cut_after_one_client_timeout() {
    let backend = Backend::start("b1").await;
    // Long enough that twice it is far from a slow machine's delays.
    let gateway = Gateway::start(&[&backend], &["--client-timeout", "5"]).await;
    let timeout = Duration::from_secs(5);
    let started = Instant::now();
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n")
        .await
        .unwrap();
    let (got, closed) = read_to_close(&mut stream).await;
    let after = started.elapsed();
    assert!(closed && got.is_empty(), "{got:?}");
    assert!(after >= timeout, "cut after {after:?}, before the timeout");
    assert!(
        after < 2 * timeout,
        "cut after {after:?}: twice the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_held_to_the_client_timeout_too() {
    let backend = Backend::start("b1").await;
    let gateway = Gateway::start(&[&backend], &["--client-timeout", "1"]).await;

    // Nothing at all, half a request head, a request whose body stops
    // short, and a connection idle after its answer.
    let sends: [&[u8]; 4] = [
        b"",
        b"GET /backends HTTP/1.1\r\nHost: test\r\n",
        b"POST /backends HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"name\":",
        b"GET /backends HTTP/1.1\r\nHost: test\r\n\r\n",
    ];
    let answers = assert_cut_by_the_timeout(gateway.admin, &sends).await;
    // Only the whole request was answered.
    for (sent, got) in sends.iter().zip(answers) {
        assert_eq!(
            got.starts_with("HTTP/1.1 200"),
            sent.ends_with(b"\r\n\r\n"),
            "{got}"
        );
    }
    // No backend was added by the cut request.
    assert_eq!(gateway.list().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_gets_504_after_the_backend_timeout() {
    let silent = silent_backend("silent").await;
    let gateway = Gateway::start(&[&silent], &["--backend-timeout", "1"]).await;

    for _ in 0..2 {
        let started = Instant::now();
        let reply = gateway.browser().get("/").await;
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(reply.body, "the backend did not answer in time\n");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "504 after {:?}, before the 1 s timeout",
            started.elapsed()
        );
    }
    // The log comes through a pipe: it may lag the answer a little.
    wait_until("the 504 in the log", || async {
        gateway
            .log()
            .contains("request failed: the backend did not answer in time")
    })
    .await;
}

/// A backend connection unused for `--backend-idle-timeout` is closed
/// then, with no request to prompt it, and the next request gets a new
/// one; one used again within it is reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_connection_unused_for_the_idle_timeout_is_closed() {
    let (backend, connections) = counting_backend("b1", 1).await;
    let gateway = Gateway::start(
        &[&backend],
        &["--threads", "1", "--backend-idle-timeout", "2"],
    )
    .await;
    let mut client = KeepAlive::connect(gateway.addr).await;

    assert_eq!(client.get_ok().await, "ok");
    // Its last use starts no earlier than this.
    let used = Instant::now();
    assert_eq!(client.get_ok().await, "ok");
    assert_eq!(
        connections.accepted(),
        1,
        "used again at once, yet not reused"
    );

    wait_until("the gateway to close the unused connection", || async {
        connections.ended() == 1
    })
    .await;
    assert!(
        used.elapsed() >= Duration::from_secs(2),
        "closed {:?} after its last use, before the 2 s idle timeout",
        used.elapsed()
    );
    assert_eq!(client.get_ok().await, "ok");
    assert_eq!(
        connections.accepted(),
        2,
        "no new connection after the old one closed"
    );
    // The new connection stays open for the next request.
    assert_eq!(client.get_ok().await, "ok");
    assert_eq!(connections.accepted(), 2);
    assert_eq!(connections.ended(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_mid_body_has_its_response_cut_short() {
    let stalling = raw_backend("stalling", |mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nten bytes!")
            .await;
        let _ = tokio::time::sleep(DEADLINE * 2).await;
    })
    .await;
    let gateway = Gateway::start(&[&stalling], &["--backend-timeout", "1"]).await;

    let started = Instant::now();
    let (text, closed) =
        send_and_read_to_close(&gateway, b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert!(closed, "the client was left waiting: {text:?}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(text.contains("content-length: 100"), "{text:?}");
    assert!(text.ends_with("\r\n\r\nten bytes!"), "{text:?}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    // Written as the response is cut, so it may lag the close a little.
    wait_until("the cut in the log", || async {
        gateway.log().contains("cutting the response short")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_slower_than_either_timeout_still_gets_its_answer() {
    let backend = body_size_backend().await;
    let gateway = Gateway::start(
        &[&backend],
        &["--backend-timeout", "1", "--client-timeout", "1"],
    )
    .await;

    // Five bytes, 400 ms apart: the upload takes longer than either
    // timeout. The backend's counts only once it is over, the client's not
    // at all once the request head is in.
    let started = Instant::now();
    let mut client = TcpStream::connect(gateway.addr).await.unwrap();
    client
        .write_all(
            b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    for byte in b"12345" {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if client.write_all(&[*byte]).await.is_err() {
            // Answered and closed early: the answer below says why.
            break;
        }
    }
    let (got, closed) = read_to_close(&mut client).await;
    let text = String::from_utf8_lossy(&got);
    assert!(closed, "{text:?}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(text.ends_with("got 5 bytes"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_slower_than_the_client_timeout_still_gets_its_answer_through() {
    let app = axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        "slow answer"
    });
    let backend = Backend::serve("b1", "127.0.0.1:0".parse().unwrap(), app).await;
    let gateway = Gateway::start(&[&backend], &["--client-timeout", "1"]).await;

    let started = Instant::now();
    let reply = gateway.browser().get("/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "slow answer");
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_websocket_outlives_both_timeouts() {
    use tokio_tungstenite::tungstenite;

    let backend = Backend::start("b1").await;
    let gateway = Gateway::start(
        &[&backend],
        &["--client-timeout", "1", "--backend-timeout", "1"],
    )
    .await;
    let addr = gateway.addr;
    // tungstenite's blocking client on the blocking pool, as in
    // gateway_e2e.rs, with socket timeouts as bounds.
    let echoes = tokio::task::spawn_blocking(move || {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_write_timeout(Some(DEADLINE)).unwrap();
        let (mut socket, _) = tungstenite::client(format!("ws://{addr}/ws"), stream)
            .unwrap_or_else(|e| panic!("WebSocket handshake: {e}"));
        let mut echoes = Vec::new();
        for word in ["before", "after"] {
            socket.send(tungstenite::Message::text(word)).unwrap();
            loop {
                match socket.read() {
                    Ok(tungstenite::Message::Text(text)) => break echoes.push(text.to_string()),
                    Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => {}
                    other => panic!("after {echoes:?}: {other:?}"),
                }
            }
            // Quiet for longer than either timeout.
            std::thread::sleep(Duration::from_millis(1500));
        }
        echoes
    })
    .await
    .unwrap();
    assert_eq!(echoes, ["b1: before", "b1: after"]);
}

const BIG: usize = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_after_the_client_timeout() {
    let backend = big_backend(BIG).await;
    let gateway = Gateway::start(&[&backend], &["--client-timeout", "1"]).await;

    let started = Instant::now();
    let mut client = TcpStream::connect(gateway.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    // Takes nothing for longer than the timeout, then reads what is left.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (got, closed) = read_to_close(&mut client).await;
    assert!(closed, "the connection was kept");
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(
        got.len() < BIG,
        "the whole response came through ({} bytes)",
        got.len()
    );
    assert!(started.elapsed() >= Duration::from_secs(1));

    // A client that reads is served the whole of it.
    let reply = gateway.browser().get("/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), BIG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_reader_gets_the_whole_response() {
    const SIZE: usize = 16 << 20;
    let backend = big_backend(SIZE).await;
    let gateway = Gateway::start(&[&backend], &["--client-timeout", "1"]).await;

    // A mebibyte at a time, 200 ms apart: well over the timeout in all,
    // but never a second without taking some.
    let started = Instant::now();
    let mut client = TcpStream::connect(gateway.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buffer = vec![0u8; 64 << 10];
    let mut next_pause = 1 << 20;
    loop {
        let n = tokio::time::timeout(DEADLINE, client.read(&mut buffer))
            .await
            .expect("stuck")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buffer[..n]);
        if got.len() >= next_pause {
            next_pause += 1 << 20;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    let body = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(got.len() - body, SIZE, "cut short");
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_its_body_is_disconnected_after_the_client_timeout() {
    // Answers once it has the whole body; it never will.
    let backend = body_size_backend().await;
    let gateway = Gateway::start(&[&backend], &["--client-timeout", "1"]).await;

    let started = Instant::now();
    let request = b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nten bytes!";
    let (text, closed) = send_and_read_to_close(&gateway, request).await;
    assert!(closed, "the connection was kept: {text:?}");
    assert!(!text.contains("got "), "{text:?}");
    assert!(started.elapsed() >= Duration::from_secs(1));

    gateway.assert_keeps_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_reading_an_upload_gets_504_after_the_backend_timeout() {
    // Reads the request head, then nothing more, and never answers.
    let stuck = silent_backend("stuck").await;
    let gateway = Gateway::start(&[&stuck], &["--backend-timeout", "1"]).await;

    // More than the sockets on the way can hold, sent as fast as it goes.
    let started = Instant::now();
    let client = TcpStream::connect(gateway.addr).await.unwrap();
    let (mut reading, mut writing) = client.into_split();
    let upload = tokio::spawn(async move {
        let head = format!("POST / HTTP/1.1\r\nHost: test\r\nContent-Length: {BIG}\r\n\r\n");
        writing.write_all(head.as_bytes()).await?;
        writing.write_all(&vec![b'x'; BIG]).await
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, reading.read(&mut buffer))
            .await
            .expect("no answer in time")
            .unwrap_or(0);
        assert!(n > 0, "closed without an answer");
        answer.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 504"), "{text:?}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    upload.abort();
}

/// A client that stops its upload part way and closes its side is told
/// so, and neither the backend's health nor the gateway's error answers
/// count it: it is the client's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_client_breaks_off_is_not_the_backends_failure() {
    let backend = body_size_backend().await;
    let gateway = Gateway::start(&[&backend], &[]).await;
    let mut client = TcpStream::connect(gateway.addr).await.unwrap();
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    client.write_all(&[b'a'; 1000]).await.unwrap();
    client.shutdown().await.unwrap();
    let (got, closed) = read_to_close(&mut client).await;
    let text = String::from_utf8_lossy(&got);
    assert!(closed, "{text:?}");
    assert!(text.starts_with("HTTP/1.1 400"), "{text:?}");
    assert!(
        text.ends_with("the request body did not arrive whole\n"),
        "{text:?}"
    );

    let (_, _, metrics) = gateway.admin_text(Method::GET, "/metrics", "").await;
    for line in [
        "sticky_backend_failures_total{backend=\"b1\"} 0",
        "sticky_gateway_error_answers_total{status=\"502\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    gateway.assert_keeps_serving().await;
}
