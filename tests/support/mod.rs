//! What the gateway's process-level tests share: demo backends served in
//! the test process (which can be stopped), the gateway binary as a child
//! process on fresh loopback ports, and browsers that keep cookie jars.
//!
//! Build the gateway first: `cargo build --example gateway` (`cargo test
//! --workspace` builds it too).
#![allow(dead_code, unused_imports)]

#[path = "../../examples/gateway/demo.rs"]
pub mod demo;

pub use std::collections::{BTreeMap, BTreeSet};
pub use std::future::Future;
pub use std::net::SocketAddr;
pub use std::path::PathBuf;
pub use std::process::Stdio;
pub use std::sync::{Arc, Mutex};
pub use std::time::{Duration, Instant};

pub use http::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
pub use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
pub use http_body_util::{BodyExt, Full};
pub use hyper::body::Bytes;
pub use hyper_util::client::legacy::connect::HttpConnector;
pub use hyper_util::client::legacy::Client;
pub use hyper_util::rt::{TokioExecutor, TokioIo};
pub use serde_json::{json, Value};
pub use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
pub use tokio::net::{TcpListener, TcpStream};
pub use tokio::process::{Child, Command};
pub use tokio::sync::{oneshot, Semaphore};
pub use tokio::task::{JoinHandle, JoinSet};

pub const SECRET: &str = "gateway end-to-end secret, 32 bytes long";
pub const STICKY: &str = "sticky";
/// Longest wait for anything: a request, a process, a backend stopping.
pub const DEADLINE: Duration = Duration::from_secs(10);

// ------------------------------------------------------------ backends

/// A backend that accepts connections, reads what it is sent, and then
/// does what `answer` does with the connection after the request head.
pub async fn raw_backend<F, Fut>(name: &str, answer: F) -> Backend
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_some() {
                    answer(stream).await;
                }
            });
        }
    });
    Backend {
        name: name.to_owned(),
        addr,
        shutdown: None,
        task: Some(task),
    }
}

/// Reads from `stream` until the end of a request head (and perhaps
/// past it); `None` if the stream ends first.
pub async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    Some(head)
}

/// The connections a [`counting_backend`] has had.
#[derive(Default)]
pub struct Connections {
    accepted: std::sync::atomic::AtomicUsize,
    ended: std::sync::atomic::AtomicUsize,
}

impl Connections {
    /// Accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closed so far, by either side.
    pub fn ended(&self) -> usize {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A backend that answers every request with `ok`, but only once
/// `together` requests are in (1: each at once), and counts its
/// connections.
pub async fn counting_backend(name: &str, together: usize) -> (Backend, Arc<Connections>) {
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(Connections::default());
    let barrier = Arc::new(tokio::sync::Barrier::new(together));
    let counts = Arc::clone(&connections);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counts.accepted.fetch_add(1, Ordering::SeqCst);
            let barrier = Arc::clone(&barrier);
            let service = hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
                let barrier = Arc::clone(&barrier);
                async move {
                    barrier.wait().await;
                    let ok = Full::new(Bytes::from_static(b"ok"));
                    Ok::<_, std::convert::Infallible>(http::Response::new(ok))
                }
            });
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                counts.ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let backend = Backend {
        name: name.to_owned(),
        addr,
        shutdown: None,
        task: Some(task),
    };
    (backend, connections)
}

/// A backend whose every answer is `size` bytes: more than the sockets
/// between it and a client can hold.
pub async fn big_backend(size: usize) -> Backend {
    let app = axum::Router::new().fallback(move || async move { vec![b'x'; size] });
    Backend::serve("big", "127.0.0.1:0".parse().unwrap(), app).await
}

/// A demo backend served in this process, which can be stopped.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_at(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Serves a fresh demo backend (empty memory) on `addr`.
    pub async fn start_at(name: &str, addr: SocketAddr) -> Backend {
        Self::serve(name, addr, demo::router(name)).await
    }

    /// Serves `app` as backend `name` on `addr` (port 0: a free one).
    pub async fn serve(name: &str, addr: SocketAddr, app: axum::Router) -> Backend {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Backend {
            name: name.to_owned(),
            addr,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Starts serving again on the same port after [`stop`](Self::stop).
    pub async fn restart(&mut self) {
        assert!(
            self.task.is_none(),
            "backend {} is still running",
            self.name
        );
        *self = Backend::start_at(&self.name, self.addr).await;
    }

    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving: the listener closes, and so does every connection
    /// (axum's graceful shutdown closes idle keep-alive connections at once
    /// and its future ends only when all are closed). The serving task is
    /// aborted afterwards all the same.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let task = self.task.take().expect("stopped twice");
        let abort = task.abort_handle();
        let closed = tokio::time::timeout(Duration::from_secs(5), task).await;
        abort.abort();
        assert!(
            closed.is_ok(),
            "backend {} did not close its connections within 5 s",
            self.name
        );
        let addr = self.addr;
        wait_until(
            "the stopped backend's port to refuse connections",
            || async move { TcpStream::connect(addr).await.is_err() },
        )
        .await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub async fn backends(names: &[&str]) -> Vec<Backend> {
    let mut started = Vec::new();
    for name in names {
        started.push(Backend::start(name).await);
    }
    started
}

/// Polls `condition` every 20 ms until it holds; panics after `DEADLINE`.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------- gateway

/// The gateway binary, built next to this test's own executable.
pub fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/gateway_e2e-HASH -> target/debug/examples/gateway
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = dir
        .join("examples")
        .join(format!("gateway{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build --example gateway` \
         (cargo test --workspace builds it)",
        binary.display()
    );
    binary
}

/// The addresses a gateway started with `--listen 127.0.0.1:0
/// --admin-listen 127.0.0.1:0` bound, read from the lines it prints at
/// start; `None` if it exits (or closes its output) before printing them.
/// Whatever it prints afterwards is read and dropped, so that it never
/// blocks on a full pipe.
pub async fn announced(child: &mut Child) -> Option<(SocketAddr, SocketAddr)> {
    let stdout = child.stdout.take().expect("the gateway's stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let read = async {
        let (mut listen, mut admin) = (None, None);
        while listen.is_none() || admin.is_none() {
            let line = lines.next_line().await.ok()??;
            let address = |prefix: &str| line.strip_prefix(prefix)?.parse().ok();
            listen = listen.or_else(|| address("gateway listening on http://"));
            admin = admin.or_else(|| address("admin and status page on http://"));
        }
        Some((listen?, admin?))
    };
    let addresses = tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the gateway did not print its addresses in time")?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some(addresses)
}

/// A gateway child process, killed on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<String>>,
    pub http: HttpClient,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Gateway {
    /// Checks that a client that keeps up is served.
    pub async fn assert_keeps_serving(&self) {
        let reply = self.browser().get("/").await;
        assert_eq!(reply.status, StatusCode::OK);
    }

    /// Starts a gateway over `backends` with the extra flags `args`, on
    /// free ports, and waits until both of them listen.
    pub async fn start(backends: &[&Backend], args: &[&str]) -> Gateway {
        Self::start_logging(backends, args, "info").await
    }

    /// Like [`start`](Self::start), logging at `level` (`RUST_LOG`).
    pub async fn start_logging(backends: &[&Backend], args: &[&str], level: &str) -> Gateway {
        Self::launch(Command::new(gateway_binary()), backends, args, level).await
    }

    /// Like [`start`](Self::start), allowed at most `files` open files
    /// (the shell's `ulimit -n`, then the gateway in its place).
    pub async fn start_with_file_limit(
        backends: &[&Backend],
        args: &[&str],
        files: u32,
    ) -> Gateway {
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
            .arg(gateway_binary());
        Self::launch(command, backends, args, "info").await
    }

    /// Runs `command` (the gateway, or what execs it) with the flags for
    /// `backends` and `args`, and waits until it listens.
    async fn launch(
        mut command: Command,
        backends: &[&Backend],
        args: &[&str],
        level: &str,
    ) -> Gateway {
        // Free ports, picked by the gateway itself: a port picked here and
        // closed again could be taken by someone else before it binds.
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0"]);
        for backend in backends {
            command
                .arg("--backend")
                .arg(format!("{}={}", backend.name, backend.url()));
        }
        command
            .args(args)
            .env("STICKY_SECRET", SECRET)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn the gateway");
        // Drain its log so that it never blocks on a full pipe.
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        let logging = tokio::spawn(async move {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        let Some((addr, admin)) = announced(&mut child).await else {
            // It has exited: its whole log says why.
            let status = match tokio::time::timeout(DEADLINE, child.wait()).await {
                Ok(Ok(status)) => status.to_string(),
                other => format!("{other:?}"),
            };
            let _ = tokio::time::timeout(DEADLINE, logging).await;
            panic!(
                "the gateway exited ({status}) before it listened:\n{}",
                log.lock().unwrap()
            );
        };
        // Both ports are bound and listening once announced.
        Gateway {
            child,
            addr,
            admin,
            log,
            http: http_client(),
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// How many TCP connections the gateway process holds open to any of
    /// `peers` (IPv4), read from Linux's `/proc`: its sockets whose
    /// remote address is one of them.
    pub fn connections_to(&self, peers: &[SocketAddr]) -> usize {
        let pid = self.child.id().expect("the gateway is running");
        // /proc/net/tcp writes an address as the IPv4 address's four bytes
        // read as one native-endian word, then the port, both in hex.
        let wanted: Vec<String> = peers
            .iter()
            .filter_map(|peer| match peer {
                SocketAddr::V4(v4) => Some(format!(
                    "{:08X}:{:04X}",
                    u32::from_ne_bytes(v4.ip().octets()),
                    v4.port()
                )),
                SocketAddr::V6(_) => None,
            })
            .collect();
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
            .expect("the gateway's sockets are read from /proc (Linux)");
        let inodes: BTreeSet<String> = table
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|fields| fields.len() > 9 && wanted.iter().any(|w| w == fields[2]))
            .map(|fields| format!("socket:[{}]", fields[9]))
            .collect();
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("the gateway's open files are read from /proc (Linux)")
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| inodes.contains(target.to_string_lossy().as_ref()))
            .count()
    }

    pub fn browser(&self) -> Browser {
        Browser::new(&self.http, self.addr)
    }

    /// One call to the admin listener: status, content type and body.
    pub async fn admin_text(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, Option<String>, String) {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.admin))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = tokio::time::timeout(DEADLINE, self.http.request(request))
            .await
            .expect("admin call timed out")
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    /// One admin API call; every answer must be JSON.
    pub async fn admin(&self, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
        let (status, content_type, text) = self.admin_text(method.clone(), path, body).await;
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "{method} {path}: {status} {text}"
        );
        let value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
        (status, value)
    }

    pub async fn post(&self, path: &str) -> Value {
        let (status, value) = self.admin(Method::POST, path, "").await;
        assert_eq!(status, StatusCode::OK, "POST {path}: {value}");
        value
    }

    /// `GET /backends`, by name.
    pub async fn list(&self) -> BTreeMap<String, Value> {
        let (status, list) = self.admin(Method::GET, "/backends", "").await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list.as_array()
            .expect("a JSON array")
            .iter()
            .map(|b| (b["name"].as_str().unwrap().to_owned(), b.clone()))
            .collect()
    }
}

// ------------------------------------------------------------- clients

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 connection to `addr` (prior knowledge), driven by a task of
/// its own whose handle says how the connection ended.
pub async fn http2_connection(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    JoinHandle<hyper::Result<()>>,
) {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    (sender, tokio::spawn(connection))
}

/// A client on one keep-alive connection of its own.
pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        KeepAlive { sender }
    }

    /// `GET /` on this connection; checks for a 200 and returns the body.
    pub async fn get_ok(&mut self) -> String {
        let request = Request::get("/")
            .header(http::header::HOST, "app.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.sender.ready().await.expect("the connection is open");
        let response = self.sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), http::Version::HTTP_11);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }
}

/// One browser: its own cookie jar (and extra headers) over a shared
/// connection pool.
pub struct Browser {
    pub http: HttpClient,
    pub addr: SocketAddr,
    pub jar: BTreeMap<String, String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub backend: Option<String>,
    pub set_cookies: Vec<String>,
    pub body: String,
}

impl Reply {
    /// The value of the sticky cookie this answer sets, if any.
    pub fn sticky_cookie(&self) -> Option<&str> {
        self.set_cookies.iter().find_map(|c| {
            c.split(';')
                .next()
                .and_then(|pair| pair.split_once('='))
                .filter(|(name, _)| name.trim() == STICKY)
                .map(|(_, value)| value.trim())
        })
    }

    /// `(backend, visits)` from a demo answer, `"<name> visit <n>\n"`.
    pub fn visit(&self) -> (String, u32) {
        assert_eq!(self.status, StatusCode::OK, "{self:?}");
        let (name, count) = self
            .body
            .trim_end()
            .split_once(" visit ")
            .unwrap_or_else(|| panic!("not a demo answer: {self:?}"));
        assert_eq!(self.backend.as_deref(), Some(name), "{self:?}");
        (name.to_owned(), count.parse().expect("a visit count"))
    }
}

impl Browser {
    pub fn new(http: &HttpClient, addr: SocketAddr) -> Self {
        Self {
            http: http.clone(),
            addr,
            jar: BTreeMap::new(),
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        ));
        self
    }

    pub fn cookie_header(&self) -> Option<String> {
        if self.jar.is_empty() {
            return None;
        }
        let pairs: Vec<String> = self.jar.iter().map(|(n, v)| format!("{n}={v}")).collect();
        Some(pairs.join("; "))
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.try_get(path).await.unwrap()
    }

    /// Like [`get`](Self::get), with transport failures as errors.
    pub async fn try_get(&mut self, path: &str) -> Result<Reply, String> {
        let mut request = Request::get(format!("http://{}{path}", self.addr));
        if let Some(cookies) = self.cookie_header() {
            request = request.header(COOKIE, cookies);
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(Bytes::new())).unwrap();
        let response = tokio::time::timeout(DEADLINE, self.http.request(request))
            .await
            .map_err(|_| "request timed out".to_owned())?
            .map_err(|e| format!("request failed: {e:?}"))?;
        let (parts, body) = response.into_parts();
        let set_cookies: Vec<String> = parts
            .headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for cookie in &set_cookies {
            let pair = cookie.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.jar
                .insert(name.trim().to_owned(), value.trim().to_owned());
        }
        let body = tokio::time::timeout(DEADLINE, body.collect())
            .await
            .map_err(|_| "body timed out".to_owned())?
            .map_err(|e| format!("body failed: {e:?}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            backend: parts
                .headers
                .get("x-backend")
                .map(|v| v.to_str().unwrap().to_owned()),
            set_cookies,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// Runs `job` on every item, at most `limit` at a time, each in its own
/// task; the results come back in the items' order.
pub async fn in_parallel<I, T, Fut>(
    items: impl IntoIterator<Item = I>,
    limit: usize,
    job: impl Fn(I) -> Fut,
) -> Vec<T>
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limit));
    let mut jobs = JoinSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let future = job(item);
        let permits = Arc::clone(&permits);
        jobs.spawn(async move {
            let _permit = permits.acquire_owned().await.unwrap();
            (i, future.await)
        });
    }
    let mut results = Vec::new();
    while let Some(result) = jobs.join_next().await {
        results.push(result.unwrap());
    }
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, t)| t).collect()
}

/// `n` new browsers, one request each (sequentially, so that the weighted
/// schedule hands them out in turn); each with its home backend.
pub async fn new_sessions(gateway: &Gateway, n: usize) -> Vec<(Browser, String)> {
    let mut sessions = Vec::new();
    for _ in 0..n {
        let mut browser = gateway.browser();
        let reply = browser.get("/").await;
        let (home, visits) = reply.visit();
        assert_eq!(visits, 1, "{reply:?}");
        assert!(reply.sticky_cookie().is_some(), "{reply:?}");
        sessions.push((browser, home));
    }
    sessions
}

/// How many new (cookie-less) clients land on each backend.
pub async fn homes_of_new_clients(gateway: &Gateway, n: usize) -> BTreeMap<String, usize> {
    let homes = in_parallel(0..n, 50, |_| {
        let mut browser = gateway.browser();
        async move { browser.get("/").await.visit().0 }
    })
    .await;
    let mut counts = BTreeMap::new();
    for home in homes {
        *counts.entry(home).or_default() += 1;
    }
    counts
}

pub mod soak;
