//! What the gateway does to a request and its response on the way
//! through, as a backend and a client see it: forwarding headers, Host,
//! hop-by-hop headers, and bodies streamed both ways.
//!
//! Build the gateway first: `cargo build --example gateway`.

mod support;

use axum::body::Body;
use axum::extract::Request as AxumRequest;
use axum::response::Response;
use support::*;

/// A backend that answers with what it received: method, target, every
/// header (as JSON, in `x-received`), and the request body as its body.
/// It also sends hop-by-hop headers of its own, which must not reach the
/// client.
async fn echo_backend(name: &str) -> Backend {
    let app = axum::Router::new().fallback(|request: AxumRequest| async move {
        let (parts, body) = request.into_parts();
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        let received = json!({
            "method": parts.method.as_str(),
            "target": parts.uri.to_string(),
            "headers": headers,
        });
        let body = body.collect().await.unwrap().to_bytes();
        Response::builder()
            .header("x-received", received.to_string())
            .header("connection", "x-backend-hop")
            .header("x-backend-hop", "must not reach the client")
            .header("keep-alive", "timeout=5")
            .body(Body::from(body))
            .unwrap()
    });
    Backend::serve(name, "127.0.0.1:0".parse().unwrap(), app).await
}

/// What the backend saw, and the response the client got.
struct Exchange {
    method: String,
    target: String,
    /// Lower-case names; repeated headers in order.
    received: Vec<(String, String)>,
    response_headers: http::HeaderMap,
    body: Bytes,
}

impl Exchange {
    fn received(&self, name: &str) -> Vec<&str> {
        self.received
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

async fn send(gateway: &Gateway, request: Request<Full<Bytes>>) -> Exchange {
    let response = tokio::time::timeout(DEADLINE, gateway.http.request(request))
        .await
        .expect("request timed out")
        .unwrap();
    exchange(response).await
}

/// As `send`, over an HTTP/2 connection of its own (prior knowledge); the
/// request's URI gives `:authority`.
async fn send_http2(gateway: &Gateway, request: Request<Full<Bytes>>) -> Exchange {
    let (mut sender, _) = http2_connection(gateway.addr).await;
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("request timed out")
        .unwrap();
    exchange(response).await
}

async fn exchange(response: http::Response<hyper::body::Incoming>) -> Exchange {
    assert_eq!(response.status(), StatusCode::OK);
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let received: Value = serde_json::from_str(
        parts.headers["x-received"]
            .to_str()
            .expect("x-received is text"),
    )
    .unwrap();
    Exchange {
        method: received["method"].as_str().unwrap().to_owned(),
        target: received["target"].as_str().unwrap().to_owned(),
        received: received["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| {
                (
                    pair[0].as_str().unwrap().to_owned(),
                    pair[1].as_str().unwrap().to_owned(),
                )
            })
            .collect(),
        response_headers: parts.headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_host_and_hop_by_hop_headers() {
    let backend = echo_backend("echo").await;
    let gateway = Gateway::start(&[&backend], &[]).await;
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{}/some/path?q=1&r=two", gateway.addr))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-app", "kept")
        .header("connection", "keep-alive, x-client-hop")
        .header("x-client-hop", "named by Connection")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "deflate")
        .body(Full::default())
        .unwrap();
    let seen = send(&gateway, request).await;

    assert_eq!(seen.method, "GET");
    assert_eq!(seen.target, "/some/path?q=1&r=two");
    let gateway_host = gateway.addr.to_string();
    assert_eq!(seen.received("host"), [backend.addr.to_string().as_str()]);
    assert_eq!(seen.received("x-app"), ["kept"]);
    // The client's chain, then the client itself.
    assert_eq!(seen.received("x-forwarded-for"), ["203.0.113.7, 127.0.0.1"]);
    assert_eq!(seen.received("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.received("x-forwarded-host"), [gateway_host.as_str()]);
    assert_eq!(
        seen.received("forwarded"),
        [format!("for=127.0.0.1;proto=http;host=\"{gateway_host}\"").as_str()]
    );
    for hop in ["x-client-hop", "keep-alive", "proxy-connection", "te"] {
        assert!(seen.received(hop).is_empty(), "{hop} reached the backend");
    }
    // The gateway keeps its own connection to the backend alive, whatever
    // the client asked of its own.
    for value in seen.received("connection") {
        assert!(!value.contains("x-client-hop"), "connection: {value}");
    }

    // The backend's hop-by-hop headers stop at the gateway too.
    for hop in ["x-backend-hop", "keep-alive"] {
        assert!(
            !seen.response_headers.contains_key(hop),
            "{hop} reached the client"
        );
    }
}

/// The load-balancer cookie is passed on with the application's, unless
/// `--strip-cookie` keeps it from the backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lb_cookie_reaches_backends_unless_stripped() {
    let backend = echo_backend("b1").await;
    // The backend's Cookie headers, for a request carrying the gateway's
    // cookie between two of the application's.
    let cookies_seen = |gateway: Gateway| async move {
        let first = send(
            &gateway,
            Request::get(format!("http://{}/", gateway.addr))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        let set = first.response_headers[SET_COOKIE].to_str().unwrap();
        let sticky = set.split(';').next().unwrap().to_owned();
        assert!(sticky.starts_with("sticky="), "{set}");
        let request = Request::get(format!("http://{}/", gateway.addr))
            .header(COOKIE, format!("app=1; {sticky}; theme=dark"))
            .body(Full::default())
            .unwrap();
        let exchange = send(&gateway, request).await;
        assert!(
            !exchange.response_headers.contains_key(SET_COOKIE),
            "the session held"
        );
        let seen: Vec<String> = exchange
            .received("cookie")
            .into_iter()
            .map(str::to_owned)
            .collect();
        (sticky, seen)
    };
    let (sticky, seen) = cookies_seen(Gateway::start(&[&backend], &[]).await).await;
    assert_eq!(seen, [format!("app=1; {sticky}; theme=dark")]);
    let (_, seen) = cookies_seen(Gateway::start(&[&backend], &["--strip-cookie"]).await).await;
    assert_eq!(seen, ["app=1; theme=dark"]);
}

/// Behind a load balancer that ends TLS, the backend must hear that the
/// client used HTTPS, from that proxy only: a client's own claim is
/// replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_forwarded_proto_and_host_are_kept() {
    let backend = echo_backend("echo").await;
    for (flags, proto, host) in [
        (&["--trusted-proxies", "1"][..], "https", "shop.example"),
        (&[][..], "http", ""),
    ] {
        let gateway = Gateway::start(&[&backend], flags).await;
        let request = Request::get(format!("http://{}/", gateway.addr))
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "shop.example")
            .body(Full::default())
            .unwrap();
        let seen = send(&gateway, request).await;
        let gateway_host = gateway.addr.to_string();
        let host = if host.is_empty() { &gateway_host } else { host };
        assert_eq!(seen.received("x-forwarded-proto"), [proto], "{flags:?}");
        assert_eq!(seen.received("x-forwarded-host"), [host], "{flags:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserve_host_keeps_the_clients_host() {
    let backend = echo_backend("echo").await;
    let gateway = Gateway::start(&[&backend], &["--preserve-host"]).await;
    let request = Request::builder()
        .uri(format!("http://{}/", gateway.addr))
        .header("host", "shop.example")
        .body(Full::default())
        .unwrap();
    let seen = send(&gateway, request).await;
    assert_eq!(seen.received("host"), ["shop.example"]);
    assert_eq!(seen.received("x-forwarded-host"), ["shop.example"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_reaches_the_backend_as_http11() {
    let backend = echo_backend("echo").await;
    for preserve_host in [false, true] {
        let flags: &[&str] = if preserve_host {
            &["--preserve-host"]
        } else {
            &[]
        };
        let gateway = Gateway::start(&[&backend], flags).await;
        // An HTTP/2 client may send each cookie as a field of its own
        // (RFC 9113, 8.2.3), and names the host in :authority, not Host.
        let request = Request::builder()
            .uri("http://shop.example/cart?item=7")
            .header("cookie", "theme=dark")
            .header("cookie", "cart=7f3a")
            .header("x-kept", "end to end")
            .body(Full::default())
            .unwrap();
        let seen = send_http2(&gateway, request).await;
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.target, "/cart?item=7");
        // One Cookie header, as HTTP/1.1 has it (RFC 6265, 5.4).
        assert_eq!(seen.received("cookie"), ["theme=dark; cart=7f3a"]);
        assert_eq!(seen.received("x-kept"), ["end to end"]);
        assert_eq!(seen.received("x-forwarded-host"), ["shop.example"]);
        let host = if preserve_host {
            "shop.example".to_owned()
        } else {
            backend.addr.to_string()
        };
        assert_eq!(
            seen.received("host"),
            [host.as_str()],
            "--preserve-host: {preserve_host}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_names_the_host() {
    use tokio::io::AsyncWriteExt;

    let backend = echo_backend("echo").await;
    let gateway = Gateway::start(&[&backend], &["--preserve-host"]).await;
    // The target's authority counts, not Host (RFC 9112, 3.2.2).
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(
            b"GET http://shop.example/cart HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("no answer in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let received = answer
        .lines()
        .find_map(|line| line.strip_prefix("x-received: "))
        .unwrap_or_else(|| panic!("not the echo backend's answer: {answer}"));
    let received: Value = serde_json::from_str(received).unwrap();
    assert_eq!(received["target"], "/cart");
    let headers = received["headers"].as_array().unwrap();
    let values = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|pair| pair[0] == name)
            .map(|pair| pair[1].as_str().unwrap())
            .collect()
    };
    assert_eq!(values("host"), ["shop.example"]);
    assert_eq!(values("x-forwarded-host"), ["shop.example"]);
}

/// A backend that reads each request head and answers with `answer`,
/// bytes as they are, then closes.
async fn raw_answer_backend(answer: &'static [u8]) -> Backend {
    raw_backend("raw", move |mut stream| async move {
        use tokio::io::AsyncWriteExt;
        let _ = stream.write_all(answer).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coded_answer_is_passed_on_framed_right_or_not_at_all() {
    // Chunked, and a Content-Length that the coding overrides (RFC 9112,
    // 6.3): the client gets the decoded body, not a length it would wait
    // for in vain.
    let both = raw_answer_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    let gateway = Gateway::start(&[&both], &[]).await;
    let reply = gateway.browser().get("/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "abc");

    // A coding the gateway cannot decode: 502, not the body still gzipped
    // but labelled plain.
    let gzipped = raw_answer_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    let gateway = Gateway::start(&[&gzipped], &[]).await;
    let reply = gateway.browser().get("/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
}

/// The gateway speaks HTTP/1.1 to its clients whatever its backends
/// speak (RFC 9110, 2.5): an HTTP/1.0 backend costs the client neither
/// its keep-alive connection nor its framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_backend_is_answered_for_in_http11() {
    for answer in [
        &b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"[..],
        // No length: the body ends where the backend closes.
        &b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello"[..],
    ] {
        let backend = raw_answer_backend(answer).await;
        let gateway = Gateway::start(&[&backend], &[]).await;
        let mut connection = KeepAlive::connect(gateway.addr).await;
        for _ in 0..3 {
            assert_eq!(connection.get_ok().await, "hello");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_pass_intact_both_ways() {
    let backend = echo_backend("echo").await;
    let gateway = Gateway::start(&[&backend], &[]).await;
    // 3 MiB of a pattern that shows any reordering or loss.
    let body: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect();
    for http2 in [false, true] {
        let request = Request::builder()
            .method(Method::PUT)
            .uri(format!("http://{}/upload", gateway.addr))
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let seen = if http2 {
            send_http2(&gateway, request).await
        } else {
            send(&gateway, request).await
        };
        assert_eq!(seen.method, "PUT");
        assert_eq!(
            seen.received("content-length"),
            [body.len().to_string().as_str()]
        );
        assert_eq!(seen.body.len(), body.len(), "HTTP/2: {http2}");
        assert!(
            seen.body == body,
            "the body came back changed (HTTP/2: {http2})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_unknown_length_streams_through() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    let backend = echo_backend("echo").await;
    let gateway = Gateway::start(&[&backend], &[]).await;
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);

    // 64 chunks, sent as the connection takes them: no length up front.
    let (chunks, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    let mut expected = Vec::new();
    let producer = tokio::spawn(async move {
        for i in 0..64u32 {
            let chunk = Bytes::from(format!("chunk {i:02}: {}\n", "x".repeat(i as usize * 100)));
            if chunks.send(Ok(Frame::data(chunk))).await.is_err() {
                break;
            }
        }
    });
    for i in 0..64u32 {
        expected.extend_from_slice(
            format!("chunk {i:02}: {}\n", "x".repeat(i as usize * 100)).as_bytes(),
        );
    }
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let request = Request::builder()
        .method(Method::POST)
        .uri("/stream")
        .header("host", gateway.addr.to_string())
        .body(body)
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("request timed out")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let received: Value =
        serde_json::from_str(response.headers()["x-received"].to_str().unwrap()).unwrap();
    let headers = received["headers"].as_array().unwrap();
    let has = |name: &str| headers.iter().any(|pair| pair[0] == name);
    assert!(!has("content-length"), "{received}");
    assert!(has("transfer-encoding"), "{received}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    producer.await.unwrap();
    assert!(body == expected, "the streamed body came back changed");
}

/// More requests to one backend at once than a small fixed pool would
/// keep: every later round of them goes out on the connections the first
/// round opened, instead of a new connection for each request over a cap
/// (which, under steady load, uses up the machine's ports).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_however_many_requests_are_in_progress() {
    const AT_ONCE: usize = 100;
    const ROUNDS: usize = 6;
    // Each round is AT_ONCE requests at once, so that many connections.
    let (backend, connections) = counting_backend("b1", AT_ONCE).await;
    // One worker, so one pool holds every connection.
    let gateway = Gateway::start(&[&backend], &["--threads", "1"]).await;

    // AT_ONCE clients, each on a keep-alive connection of its own, each
    // sending ROUNDS requests one after another.
    let mut clients = JoinSet::new();
    for _ in 0..AT_ONCE {
        let gateway = gateway.addr;
        clients.spawn(async move {
            let mut client = KeepAlive::connect(gateway).await;
            for _ in 0..ROUNDS {
                assert_eq!(client.get_ok().await, "ok");
            }
        });
    }
    tokio::time::timeout(DEADLINE, async {
        while let Some(client) = clients.join_next().await {
            client.unwrap();
        }
    })
    .await
    .expect("every round answered");

    // The first round needs AT_ONCE connections; the rest reuse them. A
    // cap below AT_ONCE would have closed the excess after each round and
    // opened it again for the next.
    let opened = connections.accepted();
    assert!(
        opened < AT_ONCE + AT_ONCE / 10,
        "{ROUNDS} rounds of {AT_ONCE} requests at once opened {opened} backend connections"
    );
}

/// A backend that answers the first request on each connection, then
/// reads the next one and closes without answering: what a backend does
/// when its keep-alive timeout (or a restart) closes an idle connection
/// just as the gateway sends a request on it. Counts the requests it read.
async fn closing_after_one_backend() -> (Backend, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&seen);
    let backend = raw_backend("closing", move |mut stream| {
        let seen = Arc::clone(&counted);
        async move {
            use tokio::io::AsyncWriteExt;
            seen.fetch_add(1, Ordering::SeqCst);
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            if stream.write_all(answer).await.is_ok() && read_head(&mut stream).await.is_some() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .await;
    (backend, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lost_to_a_closing_backend_connection_is_sent_again_if_it_may_be() {
    use std::sync::atomic::Ordering;
    let (backend, seen) = closing_after_one_backend().await;
    let gateway = Gateway::start(&[&backend], &[]).await;
    // One client connection, so that both requests are served by one
    // worker and the second finds the first's backend connection pooled.
    let stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let (mut client, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut send = async |method: Method, body: &'static str| {
        let request = Request::builder()
            .method(method)
            .uri("/")
            .header(http::header::HOST, "app.test")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        client
            .ready()
            .await
            .expect("the client connection stays open");
        let response = client.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    };

    // Idempotent and without a body: sent again on a new connection. The
    // gateway keeps a copy for that only when the pooled connection has
    // been unused for 100 ms or more, as one the backend closes for its
    // keep-alive timeout has; the pause makes it so.
    let unused = Duration::from_millis(150);
    for method in [Method::GET, Method::GET, Method::OPTIONS, Method::DELETE] {
        let before = seen.load(Ordering::SeqCst);
        tokio::time::sleep(unused).await;
        let (status, _) = send(method.clone(), "").await;
        assert_eq!(status, StatusCode::OK, "{method}");
        assert!(seen.load(Ordering::SeqCst) > before, "{method}");
    }
    assert_eq!(
        seen.load(Ordering::SeqCst),
        7,
        "every request but the first twice"
    );

    // The backend may have acted on a POST: the client gets the error.
    tokio::time::sleep(unused).await;
    let (status, body) = send(Method::POST, "order=1").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        body,
        "the backend closed the connection without an answer, or with one that cannot be passed on\n"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 8, "the POST sent once only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_cannot_be_reached_is_named_so() {
    let mut backend = Backend::start("gone").await;
    backend.stop().await;
    let gateway = Gateway::start(&[&backend], &[]).await;
    let reply = gateway.browser().get("/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.body, "the backend could not be reached\n");
    // The log says why, for the operator.
    wait_until("the failure in the log", || async {
        gateway
            .log()
            .lines()
            .any(|l| l.contains("request failed") && l.contains("cause=Connection refused"))
    })
    .await;
}

/// Trailers are end to end (RFC 9110, 6.5): a backend's reach a client that
/// takes them, and a client's reach the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_through_both_ways() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = oneshot::channel::<String>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        // The request, up to the end of its chunked body and trailers.
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        while !request.windows(5).any(|w| w == b"\r\n0\r\n") || !request.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&request));
            request.extend_from_slice(&buffer[..n]);
        }
        let _ = seen_tx.send(String::from_utf8_lossy(&request).to_lowercase());
        let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
                       Trailer: x-checksum\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: c0ffee\r\n\r\n";
        stream.write_all(answer).await.unwrap();
        let _ = stream.read(&mut buffer).await;
    });
    let backend = Backend {
        name: "trailers".into(),
        addr,
        shutdown: None,
        task: None,
    };
    let gateway = Gateway::start(&[&backend], &[]).await;

    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (mut client, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-sum", HeaderValue::from_static("42"));
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"order"))),
        Ok(Frame::trailers(trailers)),
    ];
    let request = Request::post("/")
        .header(http::header::HOST, "app.test")
        .header(http::header::TE, "trailers")
        .header(http::header::TRAILER, "x-sum")
        .body(StreamBody::new(tokio_stream::iter(frames)))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap();
    let trailers = body.trailers().cloned().expect("the backend's trailers");
    assert_eq!(trailers["x-checksum"], "c0ffee");
    assert_eq!(body.to_bytes(), "abc");

    let seen = seen.await.unwrap();
    assert!(seen.contains("\r\nte: trailers\r\n"), "{seen}");
    assert!(seen.contains("\r\ntrailer: x-sum\r\n"), "{seen}");
    assert!(seen.ends_with("\r\n0\r\nx-sum: 42\r\n\r\n"), "{seen}");
}
