//! Hostile requests through the gateway process: oversized and malformed
//! headers get a normal answer or a 4xx, never a 5xx; two Host headers,
//! or none in HTTP/1.1, get 400, and CONNECT and bodies in transfer codings
//! other than chunked get 501, none of them reaching a backend;
//! running out of files pauses accepting rather than spinning on it; the
//! signing secret never shows in its logs or its admin API.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw request bytes; returns the status code of the answer.
async fn raw_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(DEADLINE, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buffer[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer in time");
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).unwrap_or("");
    status
        .parse()
        .unwrap_or_else(|_| panic!("not an HTTP answer: {text:?}"))
}

fn request_with(headers: &[String]) -> Vec<u8> {
    let mut request = String::from("GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_never_cause_a_5xx() {
    let servers = backends(&["b1", "b2"]).await;
    let gateway = Gateway::start(
        &servers.iter().collect::<Vec<_>>(),
        &[
            "--affinity",
            "cookie",
            "--affinity",
            "ip",
            "--trusted-proxies",
            "3",
        ],
    )
    .await;
    let hops: Vec<String> = (0..1000)
        .map(|i| format!("10.1.{}.{}", i / 256, i % 256))
        .collect();
    let cookies: Vec<String> = (0..1000).map(|i| format!("c{i}=v")).collect();
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "a 64 KiB Cookie header",
            vec![format!("Cookie: big={}", "a".repeat(64 * 1024))],
        ),
        (
            "1,000 cookies",
            vec![format!("Cookie: {}", cookies.join("; "))],
        ),
        (
            "100 Cookie headers",
            (0..100).map(|i| format!("Cookie: h{i}=v")).collect(),
        ),
        (
            "1,000 X-Forwarded-For hops",
            vec![format!("X-Forwarded-For: {}", hops.join(", "))],
        ),
        (
            "garbage forwarding",
            vec!["X-Forwarded-For: ,,,[::1]:99999, 999.1.1.1, ;;".into()],
        ),
        (
            "garbage Forwarded",
            vec!["Forwarded: for=\"[zz]\";;;,for=".into()],
        ),
        (
            "a forged sticky cookie",
            vec![format!("Cookie: sticky={}", "A".repeat(51))],
        ),
        (
            "an unreadable sticky cookie",
            vec!["Cookie: sticky=\u{ff}\u{fe}".into()],
        ),
    ];
    for (what, headers) in cases {
        let status = raw_status(gateway.addr, &request_with(&headers)).await;
        assert!(
            (200..500).contains(&status),
            "{what}: {status}\n{}",
            gateway.log()
        );
    }
    // Still serving normally afterwards.
    let mut browser = gateway.browser();
    assert_eq!(browser.get("/").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_gateway_cannot_pass_on_safely_are_refused_before_any_backend() {
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = {
        let requests = Arc::clone(&requests);
        axum::Router::new().fallback(move || async move {
            requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            "answered"
        })
    };
    let backend = Backend::serve("b1", "127.0.0.1:0".parse().unwrap(), app).await;
    let gateway = Gateway::start(&[&backend], &[]).await;

    // A reverse proxy, not a forward one: no tunnel to anywhere, and no
    // CONNECT passed to a backend that might open one.
    let connect = b"CONNECT internal.example:22 HTTP/1.1\r\nHost: internal.example:22\r\n\r\n";
    assert_eq!(raw_status(gateway.addr, connect).await, 501);
    let (mut http2, _) = http2_connection(gateway.addr).await;
    let request = Request::connect("internal.example:22")
        .body(Full::default())
        .unwrap();
    let response = http2.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
    // A body in a coding the gateway cannot decode, and would otherwise
    // hand on still gzipped but labelled plain chunked.
    let gzipped =
        b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(raw_status(gateway.addr, gzipped).await, 501);
    // Two hosts, which the gateway and a backend could each read their own
    // way, and an HTTP/1.1 request with none.
    let two_hosts = b"GET / HTTP/1.1\r\nHost: shop.example\r\nHost: admin.internal\r\n\r\n";
    assert_eq!(raw_status(gateway.addr, two_hosts).await, 400);
    assert_eq!(
        raw_status(gateway.addr, b"GET / HTTP/1.1\r\n\r\n").await,
        400
    );
    // A Host that is no host: a backend building links from it, or
    // routing on it, would read it its own way (RFC 9112, 3.2).
    for host in [
        &b"a b"[..],
        b"shop.example/admin",
        b"user@shop.example",
        b"shop.example?x",
        b"shop.example#x",
        b"caf\xc3\xa9.example",
    ] {
        let request = [b"GET / HTTP/1.1\r\nHost: ", host, b"\r\n\r\n"].concat();
        assert_eq!(
            raw_status(gateway.addr, &request).await,
            400,
            "{}",
            String::from_utf8_lossy(host)
        );
    }
    let userinfo = b"GET http://user@shop.example/ HTTP/1.1\r\nHost: shop.example\r\n\r\n";
    assert_eq!(raw_status(gateway.addr, userinfo).await, 400);
    let request = Request::get("http://user@shop.example/")
        .body(Full::default())
        .unwrap();
    let response = http2.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Names, addresses and ports are hosts.
    for host in [
        "shop.example",
        "shop.example:8443",
        "127.0.0.1:80",
        "[::1]:8080",
        "xn--caf-dma.example",
        "",
    ] {
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_eq!(
            raw_status(gateway.addr, request.as_bytes()).await,
            200,
            "{host:?}"
        );
    }
    let before = requests.load(std::sync::atomic::Ordering::SeqCst);

    // HTTP/1.0 needs no Host; everything else is served as before.
    assert_eq!(
        raw_status(gateway.addr, b"GET / HTTP/1.0\r\n\r\n").await,
        200
    );
    gateway.assert_keeps_serving().await;
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        before + 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_files_pauses_accepting_instead_of_spinning() {
    let backend = Backend::start("b1").await;
    let gateway = Gateway::start_with_file_limit(&[&backend], &[], 64).await;

    // More connections than the gateway has files for, held for a second:
    // those it cannot take wait in the listen queue.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(gateway.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let failures = gateway.log().matches("accept failed").count();
    assert!(failures > 0, "the file limit was never reached");
    // Retrying at once would fail again at once, taking a core and
    // writing a warning each time.
    assert!(
        failures < 20,
        "{failures} failed accepts logged in a second"
    );

    // Once the clients go, their files are free and it serves again.
    drop(held);
    wait_until("the gateway to serve again", || async {
        let reply = gateway.browser().try_get("/").await;
        reply.is_ok_and(|reply| reply.status == StatusCode::OK)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_never_shows_in_logs_or_the_admin_api() {
    let servers = backends(&["b1", "b2"]).await;
    let gateway = Gateway::start_logging(&servers.iter().collect::<Vec<_>>(), &[], "trace").await;
    for _ in 0..5 {
        let mut browser = gateway.browser();
        browser.get("/").await;
        browser.get("/").await;
    }
    let mut forged = gateway.browser();
    forged.jar.insert("sticky".into(), "A".repeat(51));
    forged.get("/").await;
    gateway.post("/backends/b1/drain").await;
    let (_, listing) = gateway.admin(Method::GET, "/backends", "").await;

    let page = {
        let request = Request::get(format!("http://{}/", gateway.admin))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = gateway.http.request(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    };
    let log = gateway.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "logging at trace: {log}"
    );
    for (what, text) in [
        ("log", log),
        ("admin JSON", listing.to_string()),
        ("status page", page),
    ] {
        assert!(!text.contains(SECRET), "the secret is in the {what}");
        assert!(
            !text.contains(&SECRET[..16]),
            "part of the secret is in the {what}"
        );
    }
}
