//! End to end through the gateway binary: real demo backends served in this
//! process, the `gateway` example spawned as a child process on fresh
//! loopback ports, and hyper clients that keep one cookie jar per simulated
//! browser.
//!
//! Each demo backend counts visits per demo session (a cookie it sets
//! itself) in its own memory, so a misrouted request shows up as another
//! backend name or a counter that restarts at 1.
//!
//! Build the gateway first: `cargo build --example gateway` (`cargo test
//! --workspace` builds it too).

mod support;

use support::*;

// --------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_never_leave_their_backend() {
    let servers = backends(&["b1", "b2", "b3"]).await;
    let gateway = Gateway::start(&servers.iter().collect::<Vec<_>>(), &[]).await;
    let started = Instant::now();

    let seen = in_parallel(0..200, 50, |_| {
        let mut browser = gateway.browser();
        async move {
            let mut seen = Vec::with_capacity(20);
            for _ in 0..20 {
                seen.push(browser.get("/").await.visit());
            }
            seen
        }
    })
    .await;

    let mut misroutes = Vec::new();
    let mut clients_per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for (client, visits) in seen.iter().enumerate() {
        let home = &visits[0].0;
        for (i, (backend, count)) in visits.iter().enumerate() {
            if backend != home || *count != i as u32 + 1 {
                misroutes.push((client, i, backend.clone(), *count));
            }
        }
        *clients_per_backend.entry(home.clone()).or_default() += 1;
    }
    assert_eq!(
        misroutes.len(),
        0,
        "misroutes (client, request, backend, visit): {misroutes:?}"
    );
    // New sessions follow the (equal) weights exactly.
    assert_eq!(clients_per_backend.len(), 3, "{clients_per_backend:?}");
    assert!(
        clients_per_backend
            .values()
            .all(|&n| (66..=67).contains(&n)),
        "{clients_per_backend:?}"
    );
    eprintln!("4,000 requests by 200 clients in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_sharing_one_http2_connection_each_keep_their_backend() {
    let servers = backends(&["b1", "b2", "b3"]).await;
    let gateway = Gateway::start(&servers.iter().collect::<Vec<_>>(), &[]).await;
    // One connection for every session, as from a proxy in front that
    // carries its users' requests on one HTTP/2 connection: each request
    // goes where its own cookie says, not where the connection went.
    let (sender, _) = http2_connection(gateway.addr).await;
    let addr = gateway.addr;
    let seen = in_parallel(0..30, 30, |_| {
        let mut sender = sender.clone();
        async move {
            // This session's cookies, each sent as a field of its own.
            let mut jar: BTreeMap<String, String> = BTreeMap::new();
            let mut seen = Vec::new();
            for _ in 0..6 {
                let mut request = Request::get(format!("http://{addr}/"));
                for (name, value) in &jar {
                    request = request.header(COOKIE, format!("{name}={value}"));
                }
                let request = request.body(Full::new(Bytes::new())).unwrap();
                let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
                    .await
                    .expect("request timed out")
                    .unwrap();
                for cookie in response.headers().get_all(SET_COOKIE) {
                    let pair = cookie.to_str().unwrap().split(';').next().unwrap();
                    let (name, value) = pair.split_once('=').unwrap();
                    jar.insert(name.trim().to_owned(), value.trim().to_owned());
                }
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let body = String::from_utf8(body.to_vec()).unwrap();
                let (backend, visit) = body.trim_end().split_once(" visit ").unwrap();
                seen.push((backend.to_owned(), visit.parse::<u32>().unwrap()));
            }
            seen
        }
    })
    .await;

    let mut homes = BTreeSet::new();
    for visits in &seen {
        let home = &visits[0].0;
        let expected: Vec<(String, u32)> = (1..=6).map(|n| (home.clone(), n)).collect();
        assert_eq!(
            visits, &expected,
            "a session left its backend or lost its visits"
        );
        homes.insert(home.clone());
    }
    assert_eq!(homes.len(), 3, "sessions all went to {homes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_to_the_demo_backends_are_answered_over_either_protocol() {
    let servers = backends(&["b1", "b2", "b3"]).await;
    let gateway = Gateway::start(&servers.iter().collect::<Vec<_>>(), &[]).await;
    // Larger than the sockets and HTTP/2 windows hold, so the backend
    // could answer before it has all of it.
    let body = Bytes::from(vec![b'x'; 4 << 20]);
    let post = || {
        Request::post(format!("http://{}/cart", gateway.addr))
            .body(Full::new(body.clone()))
            .unwrap()
    };
    let (mut http2, _) = http2_connection(gateway.addr).await;
    for round in 0..6 {
        let response = if round % 2 == 0 {
            gateway.http.request(post()).await.unwrap()
        } else {
            http2.send_request(post()).await.unwrap()
        };
        assert_eq!(response.status(), StatusCode::OK, "round {round}");
        let answer = response.into_body().collect().await.unwrap().to_bytes();
        assert!(answer.ends_with(b" visit 1\n"), "round {round}: {answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_clients_follow_the_weights() {
    let servers = backends(&["b1", "b2"]).await;
    let gateway = Gateway::start(
        &servers.iter().collect::<Vec<_>>(),
        &["--weight", "b1=1", "--weight", "b2=3"],
    )
    .await;

    let homes = homes_of_new_clients(&gateway, 2_000).await;
    let share = |name: &str| homes.get(name).copied().unwrap_or(0) as f64 / 2_000.0;
    assert!((share("b1") - 0.25).abs() <= 0.03, "{homes:?}");
    assert!((share("b2") - 0.75).abs() <= 0.03, "{homes:?}");
    assert_eq!(homes.values().sum::<usize>(), 2_000);

    let list = gateway.list().await;
    assert_eq!(list["b1"]["weight"], 1);
    assert_eq!(list["b2"]["weight"], 3);
    let new_sessions = |name: &str| list[name]["counters"]["new_sessions"].as_u64().unwrap();
    assert_eq!(new_sessions("b1") as usize, homes["b1"], "{list:?}");
    assert_eq!(new_sessions("b2") as usize, homes["b2"], "{list:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backend_keeps_its_sessions_and_takes_no_new_ones() {
    let servers = backends(&["b1", "b2", "b3"]).await;
    let gateway = Gateway::start(&servers.iter().collect::<Vec<_>>(), &[]).await;

    let mut sessions = new_sessions(&gateway, 30).await;
    let on_b1 = sessions.iter().filter(|(_, home)| home == "b1").count();
    assert_eq!(on_b1, 10, "one new session in three goes to b1");

    let drained = gateway.post("/backends/b1/drain").await;
    assert_eq!(drained["state"], "draining", "{drained}");
    assert_eq!(gateway.list().await["b1"]["state"], "draining");

    // Every bound session stays, on b1 too.
    for (browser, home) in &mut sessions {
        for visit in 2..=4 {
            let reply = browser.get("/").await;
            assert_eq!(reply.visit(), (home.clone(), visit), "{reply:?}");
            assert!(reply.sticky_cookie().is_none(), "{reply:?}");
        }
    }

    // No new session lands on b1.
    let homes = homes_of_new_clients(&gateway, 100).await;
    assert!(!homes.contains_key("b1"), "{homes:?}");
    assert_eq!(homes.values().sum::<usize>(), 100);
    assert_eq!(homes.len(), 2, "{homes:?}");
}

/// Fifteen sessions, five on each backend, three visits each.
async fn three_visits_each(gateway: &Gateway) -> Vec<(Browser, String)> {
    let mut sessions = new_sessions(gateway, 15).await;
    for (browser, home) in &mut sessions {
        for visit in 2..=3 {
            assert_eq!(browser.get("/").await.visit(), (home.clone(), visit));
        }
    }
    sessions
}

/// A keep-alive connection straight to `backend`, with one request
/// answered; its task ends when the backend closes the connection.
async fn open_keep_alive(backend: &Backend) -> JoinHandle<()> {
    let stream = TcpStream::connect(backend.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get("/")
        .header("host", backend.addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    // Keep the sender alive so the client side does not close first.
    tokio::spawn(async move {
        let _ = sender.ready().await;
        std::future::pending::<()>().await;
    });
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_stopped_backend_move_and_stay() {
    let mut servers = backends(&["b1", "b2", "b3"]).await;
    let gateway = Gateway::start(&servers.iter().collect::<Vec<_>>(), &[]).await;
    let sessions = three_visits_each(&gateway).await;

    let keep_alive = open_keep_alive(&servers[0]).await;
    servers[0].stop().await;
    tokio::time::timeout(Duration::from_secs(5), keep_alive)
        .await
        .expect("the stopped backend left a keep-alive connection open")
        .unwrap();

    let results = in_parallel(sessions, 15, |(mut browser, home)| async move {
        let before = browser.jar.get(STICKY).cloned();
        let moved = browser.get("/").await;
        let mut later = Vec::new();
        for _ in 0..3 {
            later.push(browser.get("/").await);
        }
        (home, before, moved, later)
    })
    .await;

    let mut moved_to = BTreeSet::new();
    for (home, before, first, later) in results {
        if home == "b1" {
            assert_eq!(first.status, StatusCode::OK, "{first:?}\n{}", gateway.log());
            let (new_home, visits) = first.visit();
            assert_ne!(new_home, "b1");
            // The demo session is unknown on the new backend: it starts over.
            assert_eq!(visits, 1, "{first:?}");
            let cookie = first.sticky_cookie().expect("a new sticky Set-Cookie");
            assert_ne!(Some(cookie), before.as_deref());
            for (i, reply) in later.iter().enumerate() {
                assert_eq!(reply.visit(), (new_home.clone(), i as u32 + 2), "{reply:?}");
                assert!(reply.sticky_cookie().is_none(), "{reply:?}");
            }
            moved_to.insert(new_home);
        } else {
            for (i, reply) in std::iter::once(&first).chain(&later).enumerate() {
                assert_eq!(reply.visit(), (home.clone(), i as u32 + 4), "{reply:?}");
                assert!(reply.sticky_cookie().is_none(), "{reply:?}");
            }
        }
    }
    assert!(!moved_to.is_empty());

    // Passive health took b1 out; each moved session failed over once.
    let list = gateway.list().await;
    assert_eq!(list["b1"]["state"], "unhealthy", "{list:?}");
    assert!(list["b1"]["counters"]["failures"].as_u64().unwrap() >= 1);
    let failovers: u64 = list
        .values()
        .map(|b| b["counters"]["failovers"].as_u64().unwrap())
        .sum();
    assert_eq!(failovers, 5, "{list:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_failover_answers_503_for_sessions_of_a_stopped_backend() {
    let mut servers = backends(&["b1", "b2", "b3"]).await;
    let gateway = Gateway::start(
        &servers.iter().collect::<Vec<_>>(),
        &["--failover", "strict"],
    )
    .await;
    let mut sessions = three_visits_each(&gateway).await;

    servers[0].stop().await;

    let mut unavailable = 0;
    for round in 0..3 {
        for (browser, home) in &mut sessions {
            let reply = browser.get("/").await;
            if home == "b1" {
                unavailable += 1;
                assert_eq!(
                    reply.status,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "round {round}: {reply:?}"
                );
                assert!(reply.sticky_cookie().is_none(), "{reply:?}");
            } else {
                assert_eq!(reply.visit(), (home.clone(), 4 + round), "{reply:?}");
            }
        }
    }

    // New sessions are not bound to anything: they still get an answer.
    let homes = homes_of_new_clients(&gateway, 30).await;
    assert!(!homes.contains_key("b1"), "{homes:?}");
    assert_eq!(homes.values().sum::<usize>(), 30);

    // Operators see the 503s in the metrics.
    let (_, _, metrics) = gateway.admin_text(Method::GET, "/metrics", "").await;
    let line = format!("sticky_gateway_error_answers_total{{status=\"503\"}} {unavailable}");
    assert!(
        unavailable > 0 && metrics.lines().any(|l| l == line),
        "{line} in\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_cookies_are_new_sessions_not_errors() {
    let servers = backends(&["b1", "b2", "b3"]).await;
    let gateway = Gateway::start(&servers.iter().collect::<Vec<_>>(), &[]).await;

    let mut browser = gateway.browser();
    browser.get("/").await.visit();
    let token = browser.jar[STICKY].clone();
    assert!(token.len() > 8, "{token:?}");

    let flip = |i: usize| {
        let mut bytes = token.clone().into_bytes();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    };
    let mut bad: Vec<(String, String)> = [0, token.len() / 2, token.len() - 1]
        .into_iter()
        .map(|i| (format!("flipped at {i}"), flip(i)))
        .collect();
    bad.extend([
        ("truncated".into(), token[..token.len() - 1].to_owned()),
        ("half".into(), token[..token.len() / 2].to_owned()),
        ("extended".into(), format!("{token}A")),
        ("empty".into(), String::new()),
        ("x".into(), "x".into()),
        ("percent".into(), "%%%".into()),
        ("dots".into(), "...".into()),
        ("As".into(), "A".repeat(60)),
        ("long".into(), "Z".repeat(3_000)),
        ("non-ascii".into(), "caf\u{e9}".into()),
    ]);

    for (what, value) in bad {
        assert_ne!(value, token);
        let mut stranger = gateway.browser();
        stranger.jar.insert(STICKY.into(), value.clone());
        let reply = stranger.get("/").await;
        assert!(
            !reply.status.is_server_error(),
            "{what}: {reply:?}\n{}",
            gateway.log()
        );
        assert_eq!(reply.status, StatusCode::OK, "{what}: {reply:?}");
        let fresh = reply
            .sticky_cookie()
            .unwrap_or_else(|| panic!("{what}: no fresh sticky Set-Cookie: {reply:?}"));
        assert_ne!(fresh, value, "{what}");
        let (home, _) = reply.visit();
        // The fresh cookie holds from then on.
        let again = stranger.get("/").await;
        assert_eq!(again.visit(), (home, 2), "{what}: {again:?}");
        assert!(again.sticky_cookie().is_none(), "{what}: {again:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_one_secret_agree() {
    let servers = backends(&["b1", "b2", "b3"]).await;
    let all: Vec<&Backend> = servers.iter().collect();
    // B reads the same secret from a file with a comment and a blank line.
    let file = std::env::temp_dir().join(format!("gateway-e2e-keys-{}", std::process::id()));
    std::fs::write(&file, format!("# keys, newest first\n\n{SECRET}\n")).unwrap();
    let file = file.to_string_lossy().into_owned();
    let from_file = ["--secret-file", &file];
    let (a, b) = tokio::join!(Gateway::start(&all, &[]), Gateway::start(&all, &from_file));
    let _ = std::fs::remove_file(&file);

    // A cookie issued by A takes its session to the same backend through B.
    for i in 0..20 {
        let mut browser = a.browser();
        let (home, _) = browser.get("/").await.visit();
        browser.addr = b.addr;
        let reply = browser.get("/").await;
        assert_eq!(reply.visit(), (home.clone(), 2), "session {i}: {reply:?}");
        assert!(reply.sticky_cookie().is_none(), "session {i}: {reply:?}");
    }
    drop((a, b));

    let header = ["--affinity", "header:x-user"];
    let (a, b) = tokio::join!(Gateway::start(&all, &header), Gateway::start(&all, &header));
    let mut homes = BTreeSet::new();
    for i in 0..50 {
        let user = format!("user-{i}");
        let mut browser = a.browser().header("x-user", &user);
        let first = browser.get("/").await;
        assert!(first.sticky_cookie().is_none(), "{first:?}");
        let (home, _) = first.visit();
        browser.addr = b.addr;
        assert_eq!(browser.get("/").await.visit(), (home.clone(), 2), "{user}");
        // A new browser with the same header, through B first.
        let mut other = b.browser().header("x-user", &user);
        assert_eq!(other.get("/").await.visit().0, home, "{user}");
        homes.insert(home);
    }
    assert_eq!(homes.len(), 3, "50 keys spread over every backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookies_attributes_follow_the_flags() {
    let servers = backends(&["b1"]).await;
    let all: Vec<&Backend> = servers.iter().collect();
    // The attributes of the sticky Set-Cookie a new session at /shop/cart
    // gets, sorted.
    let attributes = |gateway: Gateway| async move {
        let reply = gateway.browser().get("/shop/cart").await;
        let cookie = reply
            .set_cookies
            .iter()
            .find(|c| c.starts_with("sticky="))
            .unwrap_or_else(|| panic!("no sticky cookie: {reply:?}"))
            .clone();
        let mut attributes: Vec<String> = cookie.split("; ").skip(1).map(str::to_owned).collect();
        attributes.sort();
        attributes
    };
    let cases: [(&[&str], &[&str]); 3] = [
        (&[], &["HttpOnly", "Path=/", "SameSite=Lax"]),
        (
            &[
                "--cookie-secure",
                "--cookie-same-site",
                "strict",
                "--cookie-domain",
                "example.test",
                "--cookie-path",
                "/shop",
            ],
            &[
                "Domain=example.test",
                "HttpOnly",
                "Path=/shop",
                "SameSite=Strict",
                "Secure",
            ],
        ),
        // Browsers drop SameSite=None without Secure.
        (
            &["--cookie-same-site", "none"],
            &["HttpOnly", "Path=/", "SameSite=None", "Secure"],
        ),
    ];
    for (flags, wanted) in cases {
        let gateway = Gateway::start(&all, flags).await;
        assert_eq!(attributes(gateway).await, wanted, "{flags:?}");
    }
    // Outside the cookie's path, no cookie: one under /shop would replace
    // the session's.
    let gateway = Gateway::start(&all, &["--cookie-path", "/shop"]).await;
    let reply = gateway.browser().get("/other").await;
    assert_eq!(reply.sticky_cookie(), None, "{reply:?}");
}

/// The access lines in `gateway`'s log so far.
fn access_lines(gateway: &Gateway) -> Vec<String> {
    gateway
        .log()
        .lines()
        .filter(|l| l.contains(" access: "))
        .map(str::to_owned)
        .collect()
}

/// The `n`th access line in `gateway`'s log (from 1), once there are `n`:
/// `what` the line is, for the message if it never comes.
async fn access_line(gateway: &Gateway, n: usize, what: &str) -> String {
    wait_until(what, || async { access_lines(gateway).len() >= n }).await;
    access_lines(gateway)[n - 1].clone()
}

/// The head of the answer to `request`, sent as it is on a connection of
/// its own to `addr`.
async fn raw_answer(addr: SocketAddr, request: &[u8]) -> String {
    let mut raw = TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, request)
        .await
        .unwrap();
    let head = read_head(&mut raw).await.expect("an answer");
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_line_per_request() {
    let mut servers = backends(&["b1", "b2"]).await;
    let all: Vec<&Backend> = servers.iter().collect();
    let gateway = Gateway::start(&all, &["--access-log"]).await;
    let quiet = Gateway::start(&all, &[]).await;

    let mut browser = gateway.browser();
    let first = browser.get("/cart?item=7").await;
    let (home, _) = first.visit();
    browser.get("/cart").await;
    // An HTTP/1.1 request with no Host: answered by the gateway itself.
    let head = raw_answer(gateway.addr, b"GET /nohost HTTP/1.1\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // The session's backend goes away: the session moves.
    let gone = servers.iter_mut().find(|s| s.name == home).unwrap();
    gone.stop().await;
    let moved = browser.get("/cart").await;
    assert_ne!(moved.visit().0, home);

    wait_until("four access lines", || async {
        access_lines(&gateway).len() == 4
    })
    .await;
    let lines = access_lines(&gateway);
    let other = if home == "b1" { "b2" } else { "b1" };
    let wanted = [
        format!("method=GET uri=/cart?item=7 status=200 backend={home} outcome=new reason=- source=none ms="),
        format!("method=GET uri=/cart status=200 backend={home} outcome=hit reason=- source=cookie ms="),
        "method=GET uri=/nohost status=400 backend=- outcome=refused reason=- source=- ms=".to_owned(),
        format!("method=GET uri=/cart status=200 backend={other} outcome=failover reason=unhealthy source=none ms="),
    ];
    for (line, wanted) in lines.iter().zip(&wanted) {
        assert!(line.contains(" INFO access: client=127.0.0.1:"), "{line}");
        assert!(line.contains(wanted.as_str()), "{line}\nwanted: {wanted}");
    }

    // Every line was written: none dropped.
    let (_, _, metrics) = gateway.admin_text(Method::GET, "/metrics", "").await;
    assert!(
        metrics.contains("\nsticky_gateway_access_lines_dropped_total 0\n"),
        "{metrics}"
    );

    // A backend that fails: named, with the status the client got.
    let mute = raw_backend("mute", |stream| async move { drop(stream) }).await;
    let failing = Gateway::start(&[&mute], &["--access-log"]).await;
    let reply = failing.browser().get("/x").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    let line = &access_line(&failing, 1, "the failure's line").await;
    assert!(
        line.contains(
            "method=GET uri=/x status=502 backend=mute outcome=failed reason=- source=- ms="
        ),
        "{line}"
    );

    // A client that breaks its upload off: its own failure, not the
    // backend's.
    let upload = b"POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nZZ\r\n";
    let head = raw_answer(failing.addr, upload).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let line = &access_line(&failing, 2, "the upload's line").await;
    let wanted = "method=POST uri=/up status=400 backend=mute outcome=client-failed";
    assert!(line.contains(wanted), "{line}");

    // Requests hyper answers itself, before the gateway sees them: a line
    // each, with `-` for what could not be read.
    let too_many: String = (0..101).map(|i| format!("x-{i}: y\r\n")).collect();
    let too_long = "a".repeat(65_535);
    let unparsed = [
        (
            "GET / HTTP/1.1\r\nhost: x\r\nno colon\r\n\r\n".to_owned(),
            400,
            "bad-request",
        ),
        (
            format!("GET / HTTP/1.1\r\nhost: x\r\n{too_many}\r\n"),
            431,
            "head-too-large",
        ),
        (
            format!("GET /{too_long} HTTP/1.1\r\nhost: x\r\n\r\n"),
            414,
            "uri-too-long",
        ),
    ];
    for (n, (request, status, reason)) in unparsed.iter().enumerate() {
        let head = raw_answer(failing.addr, request.as_bytes()).await;
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        let line = &access_line(&failing, 3 + n, reason).await;
        let wanted = format!(
            "method=- uri=- status={status} backend=- outcome=refused reason={reason} source=- ms=-"
        );
        assert!(line.contains(" INFO access: client=127.0.0.1:"), "{line}");
        assert!(line.ends_with(&wanted), "{line}\nwanted: {wanted}");
    }

    // An HTTP/2 request's URI as an HTTP/1.1 one's: its path and query.
    let (mut sender, _) = http2_connection(gateway.addr).await;
    let request = Request::get(format!("http://{}/h2?x=1", gateway.addr))
        .body(Full::default())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let line = &access_line(&gateway, 5, "the HTTP/2 line").await;
    assert!(
        line.contains("method=GET uri=/h2?x=1 status=200 backend="),
        "{line}"
    );

    // A client that leaves before the answer: its request still has a
    // line, as nginx's 499.
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let held = raw_backend("held", move |stream| {
        let _ = arrived.send(());
        async move {
            tokio::time::sleep(DEADLINE).await;
            drop(stream);
        }
    })
    .await;
    let holding = Gateway::start(&[&held], &["--access-log"]).await;
    let mut raw = TcpStream::connect(holding.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"GET /wait HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    arrivals
        .recv()
        .await
        .expect("the request reached the backend");
    drop(raw);
    let line = &access_line(&holding, 1, "the aborted line").await;
    let wanted = "method=GET uri=/wait status=499 backend=- outcome=aborted reason=- source=- ms=";
    assert!(line.contains(wanted), "{line}");

    // Off by default: nothing, though an admin change's line shows the
    // log has been read past the requests.
    let mut browser = quiet.browser();
    browser.get("/").await;
    browser.get("/").await;
    quiet.post("/backends/b1/drain").await;
    wait_until("the drain's line", || async {
        quiet.log().contains("drained")
    })
    .await;
    assert!(access_lines(&quiet).is_empty(), "{}", quiet.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_in_a_running_gateway_and_keep_its_state() {
    let servers = backends(&["b1", "b2", "b3"]).await;
    let all: Vec<&Backend> = servers.iter().collect();
    let old = "the fleet's old secret, 32 bytes..";
    let new = "the fleet's new secret, 32 bytes..";
    let file = std::env::temp_dir().join(format!("gateway-e2e-rotation-{}", std::process::id()));
    let write = |text: String| std::fs::write(&file, text).unwrap();
    write(format!("{old}\n"));
    let path = file.to_string_lossy().into_owned();
    let gateway = Gateway::start(&all, &["--secret-file", &path]).await;
    let fingerprints =
        || async { gateway.admin(Method::GET, "/keys", "").await.1["fingerprints"].clone() };
    let first = fingerprints().await;
    assert_eq!(first.as_array().unwrap().len(), 1, "{first}");

    let mut sessions = new_sessions(&gateway, 9).await;
    // What the gateway was told while running, which a restart would lose.
    gateway.post("/backends/b3/drain").await;
    let hangup = || {
        let pid = gateway.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let rotated_to = |count: usize| {
        move |keys: serde_json::Value| keys.as_array().is_some_and(|k| k.len() == count)
    };

    // Step one, on SIGHUP: the new key verifies, the old one still signs.
    write(format!("{old}\n{new}\n"));
    hangup();
    wait_until("the second key", || async {
        rotated_to(2)(fingerprints().await)
    })
    .await;
    let step_one = fingerprints().await;
    assert_eq!(step_one[0], first[0], "{step_one}");
    for (browser, home) in &mut sessions {
        let reply = browser.get("/").await;
        assert_eq!(reply.visit(), (home.clone(), 2));
        assert!(reply.sticky_cookie().is_none(), "{reply:?}");
    }

    // Step two: the new key signs; every session is re-signed in place.
    write(format!("{new}\n{old}\n"));
    hangup();
    wait_until("the new signing key", || async {
        fingerprints().await[0] == step_one[1]
    })
    .await;
    let mut old_jars = Vec::new();
    for (browser, home) in &mut sessions {
        old_jars.push(browser.jar.clone());
        let reply = browser.get("/").await;
        assert_eq!(reply.visit(), (home.clone(), 3));
        assert!(reply.sticky_cookie().is_some(), "re-signed: {reply:?}");
    }
    // Each of those cookies was under the older key, which /metrics counts
    // so that an operator knows when it is no longer needed.
    let older_key_cookies = || async {
        let (_, _, text) = gateway.admin_text(Method::GET, "/metrics", "").await;
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("sticky_gateway_older_key_cookies_total "))
            .unwrap_or_else(|| panic!("no older-key count in {text}"))
            .to_owned();
        line.parse::<usize>().unwrap()
    };
    assert_eq!(older_key_cookies().await, sessions.len());

    // Step three, through the admin API: the old key retired. Its cookies
    // count as none; the re-signed ones hold, here and on a replica that
    // only ever knew the new key.
    write(format!("{new}\n"));
    let (status, reloaded) = gateway.admin(Method::POST, "/keys/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{reloaded}");
    assert_eq!(reloaded["changed"], true, "{reloaded}");
    assert_eq!(reloaded["fingerprints"], serde_json::json!([step_one[1]]));
    let replica = Gateway::start(&all, &["--secret-file", &path]).await;
    assert_eq!(
        replica.admin(Method::GET, "/keys", "").await.1["fingerprints"],
        reloaded["fingerprints"]
    );
    for ((browser, home), jar) in sessions.iter_mut().zip(old_jars) {
        let reply = browser.get("/").await;
        assert_eq!(reply.visit(), (home.clone(), 4));
        assert!(reply.sticky_cookie().is_none(), "{reply:?}");
        browser.addr = replica.addr;
        assert_eq!(browser.get("/").await.visit(), (home.clone(), 5));
        let mut stale = gateway.browser();
        stale.jar = jar;
        let reply = stale.get("/").await;
        assert!(reply.sticky_cookie().is_some(), "a new session: {reply:?}");
        assert_ne!(
            reply.visit().0,
            "b3",
            "the drained backend takes no new session"
        );
    }
    assert_eq!(gateway.list().await["b3"]["state"], "draining");
    // The re-signed cookies are under the signing key, the stale ones under
    // none: nothing more counted.
    assert_eq!(older_key_cookies().await, sessions.len());

    // A file that holds no key changes nothing, by either way of asking.
    write("# emptied by mistake\n".into());
    let (status, error) = gateway.admin(Method::POST, "/keys/reload", "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{error}");
    hangup();
    wait_until("the failed reading logged", || async {
        gateway.log().matches("keys not read again").count() == 2
    })
    .await;
    assert_eq!(fingerprints().await, reloaded["fingerprints"]);
    gateway.assert_keeps_serving().await;
    let _ = std::fs::remove_file(&file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_take_effect_at_once() {
    let servers = backends(&["b1", "b2", "b3", "b4"]).await;
    let gateway = Gateway::start(&servers[..3].iter().collect::<Vec<_>>(), &[]).await;

    let list = gateway.list().await;
    assert_eq!(list.keys().collect::<Vec<_>>(), ["b1", "b2", "b3"]);
    for (name, entry) in &list {
        assert_eq!(entry["state"], "active", "{name}");
        assert_eq!(entry["weight"], 1, "{name}");
    }
    let mut sessions = new_sessions(&gateway, 6).await;

    // Weight 0: no new sessions on b2; its bound sessions stay.
    let b2 = gateway.post("/backends/b2/weight/0").await;
    assert_eq!(b2["weight"], 0, "{b2}");
    assert_eq!(gateway.list().await["b2"]["weight"], 0);
    let homes = homes_of_new_clients(&gateway, 60).await;
    assert!(!homes.contains_key("b2"), "{homes:?}");
    assert_eq!(homes.len(), 2, "{homes:?}");
    for (browser, home) in &mut sessions {
        assert_eq!(browser.get("/").await.visit(), (home.clone(), 2));
    }

    // Add b4, then disable the others: new clients land on b4.
    let body = json!({"name": "b4", "url": servers[3].url(), "weight": 1}).to_string();
    let (status, b4) = gateway.admin(Method::POST, "/backends", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{b4}");
    assert_eq!(
        (&b4["name"], &b4["url"], &b4["weight"], &b4["state"]),
        (
            &json!("b4"),
            &json!(servers[3].url()),
            &json!(1),
            &json!("active")
        )
    );
    let list = gateway.list().await;
    assert_eq!(list.keys().collect::<Vec<_>>(), ["b1", "b2", "b3", "b4"]);
    assert_eq!(list["b4"]["url"], servers[3].url());
    for name in ["b1", "b3", "b2"] {
        let entry = gateway.post(&format!("/backends/{name}/disable")).await;
        assert_eq!(entry["state"], "disabled", "{entry}");
    }
    let list = gateway.list().await;
    for name in ["b1", "b2", "b3"] {
        assert_eq!(list[name]["state"], "disabled", "{name}");
    }
    assert_eq!(list["b4"]["state"], "active");

    let homes = homes_of_new_clients(&gateway, 20).await;
    assert_eq!(homes, BTreeMap::from([("b4".to_owned(), 20)]));
    // Bound sessions of disabled backends fail over to b4.
    for (browser, _) in &mut sessions {
        let reply = browser.get("/").await;
        assert_eq!(reply.visit(), ("b4".to_owned(), 1), "{reply:?}");
        assert!(reply.sticky_cookie().is_some(), "{reply:?}");
    }
    let list = gateway.list().await;
    assert!(
        list["b4"]["counters"]["new_sessions"].as_u64().unwrap() >= 20,
        "{list:?}"
    );

    // Remove b4: it is gone from the list and unknown to the API.
    let (status, removed) = gateway.admin(Method::DELETE, "/backends/b4", "").await;
    assert_eq!(
        (status, removed),
        (StatusCode::OK, json!({"removed": "b4"}))
    );
    assert_eq!(
        gateway.list().await.keys().collect::<Vec<_>>(),
        ["b1", "b2", "b3"]
    );
    let (status, error) = gateway.admin(Method::POST, "/backends/b4/drain", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    assert_eq!(error, json!({"error": "no backend named \"b4\""}));

    // Nothing can serve a new session now...
    let reply = gateway.browser().get("/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    // ...until a backend comes back.
    let b1 = gateway.post("/backends/b1/enable").await;
    assert_eq!(b1["state"], "active", "{b1}");
    let homes = homes_of_new_clients(&gateway, 5).await;
    assert_eq!(homes, BTreeMap::from([("b1".to_owned(), 5)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_each_backends_sessions_and_requests_for_prometheus() {
    let servers = backends(&["b1", "b2"]).await;
    let gateway = Gateway::start(&servers.iter().collect::<Vec<_>>(), &[]).await;

    // Six sessions of three requests each: one new session and two hits.
    let mut sessions = new_sessions(&gateway, 6).await;
    for (browser, home) in &mut sessions {
        for visit in 2..=3 {
            assert_eq!(browser.get("/").await.visit(), (home.clone(), visit));
        }
    }
    gateway.post("/backends/b2/drain").await;

    let (status, content_type, text) = gateway.admin_text(Method::GET, "/metrics", "").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        content_type.as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let samples = prometheus_samples(&text);
    let sample = |series: String| {
        let value = *samples
            .get(&series)
            .unwrap_or_else(|| panic!("{series} in {text}"));
        assert_eq!(value.fract(), 0.0, "{series} is a count");
        value as u64
    };

    for name in ["b1", "b2"] {
        let homed = sessions.iter().filter(|(_, home)| home == name).count() as u64;
        let figure =
            |family: &str| sample(format!("sticky_backend_{family}{{backend=\"{name}\"}}"));
        assert_eq!(figure("requests_total"), 3 * homed, "{name}: {text}");
        assert_eq!(figure("new_sessions_total"), homed, "{name}: {text}");
        assert_eq!(figure("hits_total"), 2 * homed, "{name}: {text}");
        assert_eq!(figure("failures_total"), 0, "{name}: {text}");
        assert_eq!(figure("in_flight"), 0, "{name}: {text}");
        // Every response timed, each in one bucket, buckets cumulative.
        assert_eq!(
            figure("response_seconds_count"),
            3 * homed,
            "{name}: {text}"
        );
        let buckets: Vec<u64> = samples
            .keys()
            .filter(|series| {
                series.starts_with(&format!(
                    "sticky_backend_response_seconds_bucket{{backend=\"{name}\","
                ))
            })
            .map(|series| sample(series.clone()))
            .collect();
        assert_eq!(buckets.len(), 15, "{text}");
        assert!(buckets.iter().all(|&b| b <= 3 * homed), "{buckets:?}");
        let infinite =
            format!("sticky_backend_response_seconds_bucket{{backend=\"{name}\",le=\"+Inf\"}}");
        assert_eq!(sample(infinite), 3 * homed, "{text}");
    }
    let state = |name: &str, state: &str| {
        sample(format!(
            "sticky_backend_state{{backend=\"{name}\",state=\"{state}\"}}"
        ))
    };
    assert_eq!((state("b1", "active"), state("b1", "draining")), (1, 0));
    assert_eq!((state("b2", "active"), state("b2", "draining")), (0, 1));
    let url = servers[0].url();
    assert_eq!(
        sample(format!(
            "sticky_backend_info{{backend=\"b1\",url=\"{url}\",group=\"\"}}"
        )),
        1
    );
}

/// The samples of a Prometheus text exposition, by series. Every sample
/// must belong to a family announced by a TYPE line before it (a
/// histogram's by its `_bucket`, `_sum` and `_count` series).
fn prometheus_samples(text: &str) -> BTreeMap<String, f64> {
    let mut typed: Vec<(String, String)> = Vec::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(family) = line.strip_prefix("# TYPE ") {
            let (name, kind) = family.split_once(' ').expect(line);
            typed.push((name.to_owned(), kind.to_owned()));
        } else if !line.starts_with('#') {
            let (series, value) = line.rsplit_once(' ').expect(line);
            let name = series.split('{').next().unwrap();
            let announced = typed.iter().any(|(family, kind)| {
                name == family
                    || kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suffix| name.strip_suffix(suffix) == Some(family))
            });
            assert!(announced, "no TYPE before {line}");
            samples.insert(series.to_owned(), value.parse::<f64>().expect(line));
        }
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_time_each_backends_responses() {
    // b1 answers after 30 ms; each of its responses must count as at
    // least that (the sleep may last longer, never shorter).
    let app = axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        "slow"
    });
    let slow = Backend::serve("b1", "127.0.0.1:0".parse().unwrap(), app).await;
    let gateway = Gateway::start(&[&slow], &[]).await;
    for _ in 0..5 {
        assert_eq!(gateway.browser().get("/").await.status, StatusCode::OK);
    }
    let (_, _, text) = gateway.admin_text(Method::GET, "/metrics", "").await;
    let samples = prometheus_samples(&text);
    let series = |suffix: &str, le: Option<&str>| {
        let labels = match le {
            Some(le) => format!("backend=\"b1\",le=\"{le}\""),
            None => "backend=\"b1\"".to_owned(),
        };
        let series = format!("sticky_backend_response_seconds_{suffix}{{{labels}}}");
        *samples
            .get(&series)
            .unwrap_or_else(|| panic!("{series} in {text}"))
    };
    assert_eq!(series("count", None), 5.0, "{text}");
    assert_eq!(series("bucket", Some("+Inf")), 5.0, "{text}");
    assert_eq!(series("bucket", Some("0.025")), 0.0, "under 30 ms: {text}");
    assert!(series("sum", None) >= 0.150, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_stays_on_the_session_backend() {
    // tokio-tungstenite's async stream is driven through futures' Sink and
    // Stream traits, which are not dev-dependencies here: its re-exported
    // blocking client runs on the blocking pool instead, with socket
    // timeouts as bounds.
    use tokio_tungstenite::tungstenite;
    use tungstenite::client::IntoClientRequest;

    let servers = backends(&["b1", "b2", "b3"]).await;
    let gateway = Gateway::start(&servers.iter().collect::<Vec<_>>(), &[]).await;

    let mut homes = BTreeSet::new();
    for session in 0..6 {
        let mut browser = gateway.browser();
        let (home, _) = browser.get("/").await.visit();
        assert!(browser.jar.contains_key(STICKY));
        let cookies = browser.cookie_header().unwrap();
        let addr = gateway.addr;
        let echoes = tokio::task::spawn_blocking(move || {
            let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
            request
                .headers_mut()
                .insert(COOKIE, HeaderValue::from_str(&cookies).unwrap());
            let stream = std::net::TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            stream.set_write_timeout(Some(DEADLINE)).unwrap();
            let (mut socket, response) = tungstenite::client(request, stream)
                .unwrap_or_else(|e| panic!("WebSocket handshake: {e}"));
            assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
            let mut echoes = Vec::new();
            for i in 0..20 {
                socket
                    .send(tungstenite::Message::text(format!("hello {i}")))
                    .unwrap();
                loop {
                    match socket.read().unwrap() {
                        tungstenite::Message::Text(text) => {
                            echoes.push(text.as_str().to_owned());
                            break;
                        }
                        tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
                        other => panic!("unexpected message {other:?}"),
                    }
                }
            }
            let _ = socket.close(None);
            echoes
        })
        .await
        .unwrap();
        let expected: Vec<String> = (0..20).map(|i| format!("{home}: hello {i}")).collect();
        assert_eq!(echoes, expected, "session {session}");
        // The plain session is still where it was.
        assert_eq!(browser.get("/").await.visit(), (home.clone(), 2));
        homes.insert(home);
    }
    assert_eq!(homes.len(), 3, "{homes:?}");
}

/// An open WebSocket is load on its backend: counted in flight while its
/// tunnel is open, not only until its 101 is written. Also when its first
/// backend refused the connection and the layer placed it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_counts_as_in_flight_until_it_closes() {
    use tokio_tungstenite::tungstenite;
    use tungstenite::client::IntoClientRequest;

    async fn in_flight(gateway: &Gateway) -> u64 {
        let (_, list) = gateway.admin(Method::GET, "/backends", "").await;
        list[0]["counters"]["in_flight"].as_u64().unwrap()
    }

    // A backend that refuses connections and takes nearly every new
    // session: the WebSocket is placed there first, then again on b1.
    let servers = backends(&["b1"]).await;
    let mut gone = Backend::start("gone").await;
    gone.stop().await;
    let gateway = Gateway::start(&[&servers[0], &gone], &["--weight", "gone=256"]).await;
    let (opened_tx, opened) = tokio::sync::oneshot::channel();
    let (close, close_rx) = std::sync::mpsc::channel::<()>();
    let addr = gateway.addr;
    let client = tokio::task::spawn_blocking(move || {
        let request = format!("ws://{addr}/ws").into_client_request().unwrap();
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let (mut socket, response) = tungstenite::client(request, stream).unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        socket.send(tungstenite::Message::text("hi")).unwrap();
        let echo = loop {
            if let tungstenite::Message::Text(text) = socket.read().unwrap() {
                break text.as_str().to_owned();
            }
        };
        assert_eq!(echo, "b1: hi");
        opened_tx.send(()).unwrap();
        close_rx.recv_timeout(DEADLINE).unwrap();
        let _ = socket.close(None);
        while socket.read().is_ok() {}
    });
    opened.await.unwrap();
    assert_eq!(in_flight(&gateway).await, 1, "the open WebSocket counts");
    close.send(()).unwrap();
    client.await.unwrap();
    wait_until("the closed WebSocket to stop counting", || async {
        in_flight(&gateway).await == 0
    })
    .await;
}

// ---------------------------------------------------------------- logging

/// With `RUST_LOG=tower_sticky=debug` the log has a line for each request
/// saying which backend served it and how it was placed; written to a
/// pipe (as to a file or a log collector) it is plain text, with no
/// terminal colour codes in the way of a search.
#[tokio::test]
async fn the_debug_log_names_each_requests_backend_in_plain_text() {
    let servers = backends(&["b1", "b2"]).await;
    let gateway = Gateway::start_logging(
        &servers.iter().collect::<Vec<_>>(),
        &[],
        "tower_sticky=debug",
    )
    .await;
    let mut browser = gateway.browser();
    let first = browser.get("/").await;
    let again = browser.get("/").await;
    let home = first.backend.clone().expect("a backend answered");
    assert_eq!(again.backend.as_ref(), Some(&home));
    wait_until("both requests in the log", || async {
        gateway.log().matches(" sticky ").count() >= 2
    })
    .await;
    let log = gateway.log();
    assert!(
        !log.contains('\u{1b}'),
        "terminal escape codes in a piped log:\n{log}"
    );
    for line in [
        format!("sticky backend={home} outcome=new source=\"none\" status=200"),
        format!("sticky backend={home} outcome=hit source=\"cookie\" status=200"),
    ] {
        assert!(log.contains(&line), "no `{line}` in the log:\n{log}");
    }
}

/// The CPUs in a `Cpus_allowed_list:` line of a `/proc` status file
/// (`0-3,6`).
fn cpus_allowed(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("a Cpus_allowed_list line")
        .trim();
    list.split(',')
        .flat_map(|range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            first.parse::<usize>().unwrap()..=last.parse::<usize>().unwrap()
        })
        .collect()
}

/// `--pin-workers` keeps worker i on the i-th CPU the gateway may run on
/// (those this test may run on), from the first again past the last;
/// every other thread stays free to move: the one that accepts
/// connections, and those a worker starts to resolve a backend's host
/// name.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn pinned_workers_each_keep_to_one_cpu_in_turn() {
    let servers = backends(&["b1"]).await;
    // A host name, resolved on a thread the worker starts.
    let url = format!("http://localhost:{}", servers[0].addr.port());
    let gateway = Gateway::start(
        &[],
        &[
            "--backend",
            &format!("b1={url}"),
            "--threads",
            "3",
            "--pin-workers",
        ],
    )
    .await;
    for _ in 0..3 {
        gateway.assert_keeps_serving().await;
    }
    let allowed = cpus_allowed(&std::fs::read_to_string("/proc/self/status").unwrap());
    let pid = gateway.child.id().unwrap();
    let cpus_of = |tid: &str| {
        cpus_allowed(&std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap())
    };
    // Each worker logs its thread id as it pins itself.
    let log = gateway.log();
    let mut pinned = std::collections::BTreeMap::new();
    for line in log.lines().filter(|line| line.contains("worker pinned")) {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {name} in {line}"))
                .to_owned()
        };
        pinned.insert(field("worker").parse::<usize>().unwrap(), field("thread"));
    }
    assert_eq!(pinned.len(), 3, "{log}");
    for (index, tid) in &pinned {
        assert_eq!(
            cpus_of(tid),
            [allowed[index % allowed.len()]],
            "worker {index}"
        );
    }
    let others: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|tid| !pinned.values().any(|worker| worker == tid))
        .collect();
    assert!(others.len() > 1, "{others:?}");
    for tid in others {
        assert_eq!(cpus_of(&tid), allowed, "thread {tid}");
    }
}
