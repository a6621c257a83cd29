//! One backend of the gateway: an HTTP/1.1 client to one upstream server.
//! Requests from HTTP/2 clients are made HTTP/1.1 on the way: origin-form
//! target, one Cookie header, a Host.
//!
//! Connections are kept in idle pools, one per worker thread: a
//! connection's task runs on the thread that opened it, so a request takes
//! only connections of its own thread and never wakes another. A response
//! body returns its connection to the pool when it ends. A pool keeps as
//! many connections as its thread had requests to the backend at once, so
//! that steady load opens no new ones; a connection left unused for
//! `backend_idle_timeout` is closed. One timer per pool, running only
//! while the pool holds connections, wakes when the oldest one is due.
//!
//! A request is handed back unsent ([`Unsent`]) when no connection could
//! be made, or when a pooled connection turned out closed before the
//! request was written: the layer then retries it on the next candidate,
//! whatever the method, because nothing reached any backend.
//!
//! A backend may also close an idle connection just as a request goes out
//! on it (its keep-alive timeout running out, or a restart), so that the
//! request was written but nothing came back. A request without a body
//! whose method is idempotent (GET, HEAD, OPTIONS, DELETE, ...), sent on a
//! connection that had been unused for 100 ms or more, is then sent once
//! more on a new connection to the same backend, as nginx does; any other
//! request gets the error, as the backend may have acted on it. The copy
//! this needs is made only for such connections, so that a steady stream
//! of requests, whose connections are never unused that long, does not
//! pay for it.
//!
//! A backend gets `backend_timeout` to answer: for the response head once
//! the whole request has been handed over (so a slow upload is not taken
//! for a slow backend), then between parts of the response body.

use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use tower::Service;
use tower_sticky::sticky_core::InFlight;
use tower_sticky::{BoxError, Unsent};

use crate::client::Uploading;
use crate::latency::{Histogram, ResponseTimes};
use crate::stall::{Stall, Watched};

/// Answers the gateway made itself because no backend answered, by
/// status, for `/metrics`. One gateway per process, so one count.
pub static ERROR_ANSWERS: ErrorAnswers = ErrorAnswers::new();

/// See [`ERROR_ANSWERS`].
pub struct ErrorAnswers([std::sync::atomic::AtomicU64; 3]);

impl ErrorAnswers {
    /// The statuses counted.
    pub const STATUSES: [StatusCode; 3] = [
        StatusCode::BAD_GATEWAY,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::GATEWAY_TIMEOUT,
    ];

    const fn new() -> Self {
        Self([const { std::sync::atomic::AtomicU64::new(0) }; 3])
    }

    /// Counts an answer with `status`, if it is one of [`Self::STATUSES`].
    pub fn count(&self, status: StatusCode) {
        if let Some(i) = Self::STATUSES.iter().position(|&s| s == status) {
            self.0[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Each status and its count.
    pub fn counts(&self) -> [(StatusCode, u64); 3] {
        std::array::from_fn(|i| {
            let n = self.0[i].load(std::sync::atomic::Ordering::Relaxed);
            (Self::STATUSES[i], n)
        })
    }
}

/// Carried by an upgrade request: the gateway's shutdown waits for it to
/// be dropped, so that a tunnel (a WebSocket) it is held by may finish in
/// the time given to requests under way, rather than be cut at once. It
/// also keeps the request counted as in flight on its backend while the
/// tunnel is open (see [`Drain::keep`]).
#[derive(Clone)]
pub struct Drain {
    _held: tokio::sync::watch::Receiver<bool>,
    load: Arc<Mutex<Option<InFlight>>>,
}

impl Drain {
    /// Holds `stop`, the receiver the gateway's shutdown waits on.
    pub fn new(stop: tokio::sync::watch::Receiver<bool>) -> Self {
        Drain {
            _held: stop,
            load: Arc::default(),
        }
    }

    /// Keeps the request's in-flight count until the last clone is
    /// dropped: the tunnel's, when it closes (or this one's, if the tunnel
    /// never opened).
    pub fn keep(&self, in_flight: InFlight) {
        *self.load.lock().unwrap_or_else(|e| e.into_inner()) = Some(in_flight);
    }
}

/// Why a backend did not answer. A concrete type (not a bare `BoxError`)
/// keeps the whole proxy future provably `Send`; an unsent request stays
/// reachable as its `source()`, for the layer's retry.
#[derive(Debug)]
pub enum ProxyError {
    /// The connection or the exchange failed.
    Failed(BoxError),
    /// The backend sent nothing for this long: no response head once the
    /// request was handed over, or no next part of the response body.
    TimedOut(Duration),
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::Failed(error) => error.fmt(f),
            ProxyError::TimedOut(after) => write!(f, "no response within {after:?}"),
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProxyError::Failed(error) => Some(&**error),
            ProxyError::TimedOut(_) => None,
        }
    }
}

impl ProxyError {
    fn new(error: impl Into<BoxError>) -> Self {
        ProxyError::Failed(error.into())
    }
}

/// The body the gateway answers with.
pub type Body = BoxBody<Bytes, BoxError>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The User-Agent of the gateway's health checks, for backends' logs.
const HEALTH_CHECK_AGENT: &str = "tower-sticky-gateway-health-check";

/// The most of a health check's answer read: its status decides.
const HEALTH_CHECK_BODY: usize = 64 * 1024;
/// A request going out on a pooled connection unused for this long keeps
/// a copy to send again if the backend closes the connection unanswered:
/// long enough that requests in a steady stream never pay for the copy,
/// shorter than any backend's keep-alive timeout.
const REPLAY_AFTER_UNUSED: Duration = Duration::from_millis(100);
/// The default of `--backend-timeout`.
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(60);
/// The default of `--backend-idle-timeout` (as nginx's upstream
/// `keepalive_timeout`).
pub const BACKEND_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings shared by every upstream.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// Keep the client's `Host` header instead of the backend's.
    pub preserve_host: bool,
    /// Worker threads serving clients: each gets its own idle pool.
    pub workers: usize,
    /// The longest wait for a response head once the request is handed
    /// over, and between parts of a response body.
    pub backend_timeout: Duration,
    /// How long a pooled connection may sit unused and still be taken.
    pub backend_idle_timeout: Duration,
    /// The peer is a proxy the gateway trusts (`--trusted-proxies`): its
    /// X-Forwarded-Proto and X-Forwarded-Host say what the client used,
    /// and are passed on instead of the gateway's own.
    pub trust_forwarded: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            preserve_host: false,
            workers: 0,
            backend_timeout: BACKEND_TIMEOUT,
            backend_idle_timeout: BACKEND_IDLE_TIMEOUT,
            trust_forwarded: false,
        }
    }
}

/// A short response of the gateway's own.
pub fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The backend's service: forwards requests to one upstream server.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    authority: Authority,
    host: HeaderValue,
    options: ProxyOptions,
    /// Idle connections: one pool off the workers, then one per worker,
    /// as [`crate::worker::slot`] numbers them.
    idle: Box<[Mutex<Pool>]>,
    /// Its response times, sharded as `idle` is.
    times: ResponseTimes,
}

/// One thread's idle connections to one backend.
#[derive(Default)]
struct Pool {
    /// In the order they came back, so the longest unused first.
    conns: VecDeque<Conn>,
    /// Whether a task is timing the oldest connection out.
    swept: bool,
}

impl Pool {
    /// Closes the connections unused for `timeout` at `now`, and those
    /// closed at the other end that have reached the front.
    fn close_unused(&mut self, now: tokio::time::Instant, timeout: Duration) {
        while self.conns.front().is_some_and(|oldest| {
            now.saturating_duration_since(oldest.idle_since) >= timeout || oldest.sender.is_closed()
        }) {
            self.conns.pop_front();
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.inner.url)
            .finish()
    }
}

impl Upstream {
    /// An upstream at `url` (`http://host:port`, optionally with a
    /// trailing `/`).
    pub fn new(url: &str, options: &ProxyOptions) -> Result<Upstream, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(format!("{url:?}: only http:// backends are supported"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!(
                "{url:?}: give the backend as http://host:port, without a path"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            // The gateway sends no credentials of its own, and they would
            // show in the admin API and the metrics.
            return Err(format!(
                "{url:?}: give the backend as http://host:port, without a user name or password"
            ));
        }
        let authority = if authority.port().is_some() {
            authority
        } else {
            format!("{}:80", authority.host())
                .parse()
                .map_err(|e| format!("{url:?}: {e}"))?
        };
        let host =
            HeaderValue::from_str(authority.as_str()).map_err(|e| format!("{url:?}: {e}"))?;
        Ok(Upstream {
            inner: Arc::new(Inner {
                url: format!("http://{authority}"),
                authority,
                host,
                options: options.clone(),
                idle: (0..=options.workers).map(|_| Mutex::default()).collect(),
                times: ResponseTimes::new(options.workers + 1),
            }),
        })
    }

    /// The backend's URL, as `http://host:port`.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The backend's response times so far: from each request handed over
    /// to its response head.
    pub fn response_times(&self) -> Histogram {
        self.inner.times.read()
    }

    /// This thread's idle pool, and its index.
    fn idle(&self) -> (std::sync::MutexGuard<'_, Pool>, usize) {
        let pools = &self.inner.idle;
        let shard = crate::worker::slot() % pools.len();
        (
            pools[shard].lock().unwrap_or_else(|e| e.into_inner()),
            shard,
        )
    }

    /// A pooled connection ready for a request, the most recently used
    /// first, and how long it sat unused. Connections still busy (their
    /// last response's end not yet seen by their task) stay pooled; closed
    /// ones are dropped. Those unused for the idle timeout are closed, not
    /// taken, even if their timer has not run yet.
    fn take_idle(&self) -> Option<(Conn, Duration)> {
        let now = tokio::time::Instant::now();
        let (mut pool, _) = self.idle();
        pool.close_unused(now, self.inner.options.backend_idle_timeout);
        let idle = &mut pool.conns;
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].sender.is_ready() {
                let conn = idle.remove(i)?;
                let unused = now.saturating_duration_since(conn.idle_since);
                return Some((conn, unused));
            }
            if idle[i].sender.is_closed() {
                idle.remove(i);
            }
        }
        None
    }

    /// Puts a connection whose response was read to the end back in the
    /// pool, unless it closed. The pool has no bound but the idle timeout:
    /// it holds about as many connections as its thread had requests to
    /// the backend in progress at once, and a cap below that would close
    /// connections only for steady load to open new ones, one for each
    /// request over the cap.
    fn give_back(&self, mut conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        conn.idle_since = tokio::time::Instant::now();
        let (mut pool, shard) = self.idle();
        pool.conns.push_back(conn);
        if !pool.swept {
            // On this thread's runtime, which a pool's connections belong
            // to; with none (a body dropped as a runtime shuts down), no
            // timer is needed.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                pool.swept = true;
                runtime.spawn(sweep(Arc::downgrade(&self.inner), shard));
            }
        }
    }

    /// One active health check: `GET path` on a connection of its own
    /// (so that it also finds a backend no longer taking connections,
    /// which pooled ones would hide), answered within `timeout`. It passes
    /// on a 2xx or 3xx status; the error says why it did not, and at
    /// which step: connecting, waiting for the answer, or reading it.
    pub async fn check(&self, path: &PathAndQuery, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let within = |step: &'static str| move |_| format!("{step} within {timeout:?}");
        let address = self.inner.authority.as_str();
        let stream = tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(address))
            .await
            .map_err(within("could not connect"))?
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        // Ends when the connection closes: after the answer, or once the
        // check gives up on it and drops its side.
        tokio::spawn(connection);
        let request = Request::get(path.as_str())
            .header(header::HOST, self.inner.host.clone())
            .header(header::USER_AGENT, HEALTH_CHECK_AGENT)
            .header(header::CONNECTION, "close")
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout_at(deadline, sender.send_request(request))
            .await
            .map_err(within("connected, but no answer"))?
            .map_err(|e| {
                let cause = error_chain(&e)
                    .last()
                    .map_or_else(String::new, |c| c.to_string());
                format!("connected, but no answer: {cause}")
            })?;
        let status = response.status();
        if !(status.is_success() || status.is_redirection()) {
            return Err(format!("answered {status}"));
        }
        // Read to its end (a little of it at most), so that the backend is
        // not cut off while writing it; one that cannot finish it fails.
        let body = http_body_util::Limited::new(response.into_body(), HEALTH_CHECK_BODY).collect();
        match tokio::time::timeout_at(deadline, body).await {
            Err(_) => Err(format!(
                "answered {status}, but its body was not over within {timeout:?}"
            )),
            Ok(Err(e)) if !e.is::<http_body_util::LengthLimitError>() => {
                Err(format!("answered {status}, but its body failed: {e}"))
            }
            // More than the limit is fine: the status has spoken.
            Ok(_) => Ok(()),
        }
    }

    async fn connect(&self, upgrades: bool) -> Result<Conn, BoxError> {
        let address = self.inner.authority.as_str();
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| format!("connect to {address}: timed out"))??;
        stream.set_nodelay(true)?;
        let writing = Arc::new(Stall::new());
        let stream = Watched::new(stream, Arc::clone(&writing));
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            let result = if upgrades {
                connection.with_upgrades().await
            } else {
                connection.await
            };
            if let Err(error) = result {
                tracing::debug!(%error, "upstream connection closed");
            }
        });
        Ok(Conn::new(
            sender,
            writing,
            self.inner.options.backend_timeout,
        ))
    }

    async fn forward(self, mut request: Request<Incoming>) -> Result<Response<Body>, ProxyError> {
        let upgrade = is_upgrade(request.headers());
        prepare(&mut request, &self.inner, upgrade);
        // Copies, not taken from the request: a request that comes back
        // unsent, for the layer to place on another backend, still carries
        // them, and its tunnel can open there.
        let client_upgrade = upgrade.then(|| {
            request
                .extensions()
                .get::<hyper::upgrade::OnUpgrade>()
                .cloned()
                // None: the tunnel then reports that no upgrade was available.
                .unwrap_or_else(|| hyper::upgrade::on(Request::new(())))
        });
        let drain = upgrade
            .then(|| request.extensions().get::<Drain>().cloned())
            .flatten();
        let (mut request, mut handed_over) = Outgoing::wrap(request);

        // A pooled connection may have closed; if so the request comes back
        // untouched and goes out on a fresh connection. If it closed as the
        // request went out, a copy of a request that may be sent twice
        // goes out instead.
        if !upgrade {
            let replayable = handed_over.is_none() && request.method().is_idempotent();
            let mut copy = None;
            while let Some((mut conn, unused)) = self.take_idle() {
                if replayable && copy.is_none() && unused >= REPLAY_AFTER_UNUSED {
                    copy = Some(Outgoing::copy(&request));
                }
                match conn.exchange(request, &mut handed_over).await? {
                    Ok(response) => return self.finish(response, conn),
                    Err(mut error) => match (error.take_message(), copy.take()) {
                        (Some(unsent), kept) => {
                            request = unsent;
                            copy = kept;
                        }
                        (None, Some(copy)) if closed_unanswered(error.error()) => {
                            tracing::debug!(
                                backend = self.url(),
                                "the backend closed a pooled connection as a request went out; \
                                 sending it again on a new connection"
                            );
                            request = copy;
                            break;
                        }
                        (None, _) => return Err(ProxyError::new(error.into_error())),
                    },
                }
            }
        }
        let mut conn = match self.connect(upgrade).await {
            Ok(conn) => conn,
            // Nothing was sent: the layer may place the request elsewhere.
            Err(error) => return Err(unsent(request, error)),
        };
        let mut response = match conn.exchange(request, &mut handed_over).await? {
            Ok(response) => response,
            Err(mut error) => {
                return match error.take_message() {
                    Some(request) => Err(unsent(request, error.into_error())),
                    None => Err(ProxyError::new(error.into_error())),
                }
            }
        };
        if let Some(client_upgrade) = client_upgrade {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    // Held while the tunnel is open, so that shutdown waits
                    // for it as for a request under way.
                    let _drain = drain;
                    match tokio::try_join!(client_upgrade, upstream_upgrade) {
                        Ok((client, upstream)) => {
                            let (mut client, mut upstream) =
                                (TokioIo::new(client), TokioIo::new(upstream));
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                        Err(error) => tracing::debug!(%error, "upgrade failed"),
                    }
                });
                let (parts, body) = response.into_parts();
                return Ok(Response::from_parts(
                    parts,
                    body.map_err(Into::into).boxed(),
                ));
            }
        }
        self.finish(response, conn)
    }

    /// The client's response: hop-by-hop headers removed, and a body that
    /// returns `conn` to the pool once read to the end. A body in a
    /// transfer coding hyper does not decode is an error: passed on, it
    /// would reach the client still coded but labelled plain.
    fn finish(
        &self,
        response: Response<Incoming>,
        mut conn: Conn,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = response.into_parts();
        if strip_hop_by_hop(&mut parts.headers, false, false) {
            return Err(ProxyError::new(
                "the response is in a transfer coding other than chunked",
            ));
        }
        // A proxy answers in its own version (RFC 9110, 2.5): an HTTP/1.0
        // backend must not make the client's connection HTTP/1.0 too.
        parts.version = Version::HTTP_11;
        // The backend's time for the body's first part starts now; the
        // wait for the head ended.
        let waited_since = conn.armed_at;
        conn.arm();
        let shard = crate::worker::slot();
        let waited = conn.armed_at.saturating_duration_since(waited_since);
        self.inner.times.record(shard, waited);
        let body = Leased {
            body,
            lease: Some((self.clone(), conn)),
        };
        Ok(Response::from_parts(parts, body.boxed()))
    }
}

/// Closes the connections of pool `shard` as they reach the idle timeout,
/// waking when the oldest is due; ends when the pool is empty or its
/// backend is gone.
async fn sweep(inner: std::sync::Weak<Inner>, shard: usize) {
    loop {
        let due = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let timeout = inner.options.backend_idle_timeout;
            let mut pool = inner.idle[shard].lock().unwrap_or_else(|e| e.into_inner());
            pool.close_unused(tokio::time::Instant::now(), timeout);
            match pool.conns.front() {
                Some(oldest) => oldest.idle_since + timeout,
                None => {
                    pool.swept = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(due).await;
    }
}

impl Service<Request<Incoming>> for Upstream {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        Box::pin(self.clone().forward(request))
    }
}

/// The error for a request that never left: the layer may retry it, as
/// it came (its upload followed still, for the client timeout). A copy
/// sent again has no request of the client's left to hand back; it has
/// reached the backend once already, so its error is final.
fn unsent(request: Request<Outgoing>, error: impl Into<BoxError>) -> ProxyError {
    let (mut parts, outgoing) = request.into_parts();
    let Some(body) = outgoing.body else {
        return ProxyError::new(error);
    };
    let (body, upload) = body.into_parts();
    if let Some(upload) = upload {
        parts.extensions.insert(upload);
    }
    ProxyError::new(Unsent::new(Request::from_parts(parts, body), error))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one hop, never forwarded as they came (RFC 9110
/// 7.6.1). `Trailer`, which names the trailer fields that follow the
/// body, is end to end and passed on with them.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

/// Whether `headers` name a transfer coding other than chunked, the only
/// one hyper decodes: a body in it cannot be passed on as it came.
pub fn unknown_transfer_coding(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        // Empty list elements are allowed, and ignored (RFC 9110, 5.6.1.2).
        .filter(|coding| !coding.is_empty())
        .any(|coding| !coding.eq_ignore_ascii_case(b"chunked"))
}

/// Removes hop-by-hop headers, and those the `Connection` header names.
/// An upgrade keeps `Connection: upgrade` and `Upgrade`; a request whose
/// client takes trailers (`keep_te_trailers`) keeps `TE: trailers`. A message that
/// came with Transfer-Encoding also loses any Content-Length, which the
/// coding overrides (RFC 9112, 6.3) and which the body, decoded, need not
/// match. Returns whether the Transfer-Encoding named a coding other than
/// chunked.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool, keep_te_trailers: bool) -> bool {
    // One pass over the names finds the few present (often none): cheaper
    // than a lookup of each.
    let mut found = [false; HOP_BY_HOP.len()];
    let mut upgrade = false;
    for name in headers.keys() {
        // The index into HOP_BY_HOP.
        let hop = match name.as_str() {
            "connection" => 0,
            "keep-alive" => 1,
            "proxy-connection" => 2,
            "proxy-authenticate" => 3,
            "proxy-authorization" => 4,
            "te" => 5,
            "transfer-encoding" => 6,
            "upgrade" => {
                upgrade = true;
                continue;
            }
            _ => continue,
        };
        found[hop] = true;
    }
    if found[0] {
        // Further names the Connection header lists; its usual tokens name
        // no header to remove, or one removed below anyway.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.is_empty()
                    && !["keep-alive", "close", "upgrade"]
                        .iter()
                        .any(|usual| t.eq_ignore_ascii_case(usual))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in &named {
            // `Connection: upgrade` names the Upgrade header itself, which
            // an upgrade must carry to the backend.
            if !(keep_upgrade && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
    }
    let mut unknown_coding = false;
    if found[6] {
        unknown_coding = unknown_transfer_coding(headers);
        headers.remove(header::CONTENT_LENGTH);
    }
    // A client that takes trailers says so for the next hop too, so that
    // a backend sends them (hyper's, for one, only then does).
    let te_trailers = keep_te_trailers
        && found[5]
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            });
    for (name, _) in HOP_BY_HOP.iter().zip(found).filter(|(_, found)| *found) {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // TE is a connection option, which Connection must name (RFC 9110,
    // 10.1.4).
    match (keep_upgrade, te_trailers) {
        (true, false) => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        (true, true) => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade, te"));
        }
        (false, true) => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("te"));
        }
        (false, false) => {}
    }
    if upgrade && !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
    unknown_coding
}

/// Appends `ip` in its textual form. Written out by hand for IPv4: the
/// formatter's padding support costs more than the whole header.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// A header value from bytes built for it, without another copy.
fn header_value(bytes: Vec<u8>) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(bytes)).ok()
}

/// Rewrites a client's request for the backend; `upgrade` is whether it
/// asks for an HTTP/1.1 upgrade.
fn prepare(request: &mut Request<Incoming>, upstream: &Inner, upgrade: bool) {
    let client = request.extensions().get::<SocketAddr>().map(|a| a.ip());
    // The host the client asked for: the target's authority when it has
    // one (HTTP/2's :authority, or an absolute-form target, which RFC 9112
    // (3.2.2) puts before Host), else Host.
    let original_host = request
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| request.headers().get(header::HOST).cloned());
    // The backend gets the origin form (path and query) even from a client
    // that sent the absolute form.
    if request.uri().scheme().is_some() || request.uri().authority().is_some() {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *request.uri_mut() = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
    }
    let from_http2 = request.version() == Version::HTTP_2;
    *request.version_mut() = Version::HTTP_11;

    let headers = request.headers_mut();
    // A body in a coding other than chunked was refused before.
    let _ = strip_hop_by_hop(headers, upgrade, true);
    if from_http2 {
        join_cookies(headers);
    }
    if let Some(ip) = client {
        let mut chain = Vec::with_capacity(48);
        for prior in headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(prior) = prior.to_str() {
                if !prior.is_empty() {
                    chain.extend_from_slice(prior.as_bytes());
                    chain.extend_from_slice(b", ");
                }
            }
        }
        push_ip(&mut chain, ip);
        if let Some(value) = header_value(chain) {
            headers.insert(X_FORWARDED_FOR, value);
        }

        let mut element = Vec::with_capacity(64);
        element.extend_from_slice(b"for=");
        if ip.is_ipv6() {
            element.extend_from_slice(b"\"[");
            push_ip(&mut element, ip);
            element.extend_from_slice(b"]\"");
        } else {
            push_ip(&mut element, ip);
        }
        element.extend_from_slice(b";proto=http");
        // Only a host that needs no escaping inside the quoted string.
        if let Some(host) = original_host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.contains(['"', '\\']))
        {
            element.extend_from_slice(b";host=\"");
            element.extend_from_slice(host.as_bytes());
            element.push(b'"');
        }
        if let Some(value) = header_value(element) {
            headers.append(header::FORWARDED, value);
        }
    }
    // A trusted proxy in front knows what the client used (HTTPS, say,
    // ended at a load balancer); anyone else's claim is replaced.
    let trusted = upstream.options.trust_forwarded;
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(host) = &original_host {
        if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
    }
    // An HTTP/2 request names its host in :authority and may carry no
    // Host header: the backend's HTTP/1.1 request must have one.
    let host = match original_host {
        Some(host) if upstream.options.preserve_host => host,
        _ => upstream.host.clone(),
    };
    headers.insert(header::HOST, host);
}

/// Joins an HTTP/2 request's cookie fields into the one Cookie header
/// that HTTP/1.1 allows (RFC 9113, 8.2.3; RFC 6265, 5.4): HTTP/2 clients
/// may send each cookie as a field of its own, and many servers read only
/// the first Cookie header.
fn join_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(header::COOKIE).iter();
    if fields.next().is_none() || fields.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for (i, field) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(field.as_bytes());
    }
    if let Some(joined) = header_value(joined) {
        headers.insert(header::COOKIE, joined);
    }
}

/// An upstream connection, with the deadline of what it waits for.
///
/// A request costs no timer of its own: the connection's one timer fires
/// at or before `deadline`, and is moved on to it only when it fires
/// early. Most requests only write `deadline`.
struct Conn {
    sender: SendRequest<Outgoing>,
    /// Since when a write to the backend has been waiting for room.
    writing: Arc<Stall>,
    timeout: Duration,
    deadline: tokio::time::Instant,
    /// When `deadline` was last set a whole timeout ahead.
    armed_at: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// When it last went back to its pool.
    idle_since: tokio::time::Instant,
}

impl Conn {
    fn new(sender: SendRequest<Outgoing>, writing: Arc<Stall>, timeout: Duration) -> Conn {
        let now = tokio::time::Instant::now();
        let deadline = now + timeout;
        Conn {
            sender,
            writing,
            timeout,
            deadline,
            armed_at: now,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            idle_since: now,
        }
    }

    /// Gives the backend the full timeout from now.
    fn arm(&mut self) {
        self.armed_at = tokio::time::Instant::now();
        self.deadline = self.armed_at + self.timeout;
    }

    /// Ready once the deadline has passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            std::task::ready!(self.timer.as_mut().poll(cx));
            if tokio::time::Instant::now() >= self.deadline {
                return Poll::Ready(());
            }
            let deadline = self.deadline;
            self.timer.as_mut().reset(deadline);
        }
    }

    /// While the request body goes out: ready with the timeout once the
    /// backend has taken none of it for the backend timeout. Otherwise the
    /// timer is set a timeout ahead, to look again then (a wait that starts
    /// before that ends after it).
    fn poll_upload_stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, ProxyError>> {
        loop {
            let now = tokio::time::Instant::now();
            self.deadline = match self.writing.since() {
                Some(since) if since + self.timeout <= now => {
                    return Poll::Ready(Err(ProxyError::TimedOut(self.timeout)));
                }
                Some(since) => since + self.timeout,
                None => now + self.timeout,
            };
            std::task::ready!(self.poll_expired(cx));
        }
    }

    /// Sends `request` and waits for the response head, for at most the
    /// backend timeout counted from when the request's body has been
    /// handed over (`handed_over` resolves then; `None`: at once). Until
    /// then the timeout counts only while the backend takes none of the
    /// body. The outer error is the timeout, the inner one hyper's, which
    /// may give the request back unsent.
    async fn exchange(
        &mut self,
        request: Request<Outgoing>,
        handed_over: &mut Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Result<Result<Response<Incoming>, TrySendError<Request<Outgoing>>>, ProxyError> {
        let mut response = std::pin::pin!(self.sender.try_send_request(request));
        self.arm();
        std::future::poll_fn(|cx| {
            if let Poll::Ready(response) = response.as_mut().poll(cx) {
                return Poll::Ready(Ok(response));
            }
            if let Some(receiver) = handed_over {
                if Pin::new(receiver).poll(cx).is_pending() {
                    return self.poll_upload_stalled(cx);
                }
                // Sent, or dropped with the body: either way it is over.
                *handed_over = None;
                self.arm();
            }
            std::task::ready!(self.poll_expired(cx));
            Poll::Ready(Err(ProxyError::TimedOut(self.timeout)))
        })
        .await
    }
}

/// A request body on its way to a backend. It says when its last part has
/// been handed over (by dropping `handed_over`), which is when the wait
/// for the response head starts: a slow upload is not a slow backend. It
/// also tells the client timeout when it waits for the client (through
/// the [`crate::client::Upload`] in the request's extensions).
struct Outgoing {
    /// `None` for a copy of a request without a body.
    body: Option<Uploading<Incoming>>,
    handed_over: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Outgoing {
    /// Wraps `request`'s body; the receiver resolves once the body is
    /// handed over, or is `None` when there is no body to wait for.
    fn wrap(
        mut request: Request<Incoming>,
    ) -> (
        Request<Outgoing>,
        Option<tokio::sync::oneshot::Receiver<()>>,
    ) {
        let upload = request.extensions_mut().remove::<crate::client::Upload>();
        let (handed_over, receiver) = if request.body().is_end_stream() {
            (None, None)
        } else {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            (Some(sender), Some(receiver))
        };
        let request = request.map(|body| Outgoing {
            body: Some(Uploading::new(body, upload)),
            handed_over,
        });
        (request, receiver)
    }

    /// A copy of `request`, which has no body, to send again.
    fn copy(request: &Request<Outgoing>) -> Request<Outgoing> {
        let mut copy = Request::new(Outgoing {
            body: None,
            handed_over: None,
        });
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        copy
    }
}

/// Whether a request that went out on a connection got no answer because
/// the connection closed: the backend's end of an idle connection, not a
/// fault in the request or the response.
fn closed_unanswered(error: &hyper::Error) -> bool {
    error.is_incomplete_message()
        || error_chain(error)
            .find_map(|e| e.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                )
            })
}

/// `error` and the errors under it (its `source()`s), outermost first.
pub fn error_chain<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'e (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| (*e).source())
}

impl hyper::body::Body for Outgoing {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let Some(body) = &mut self.body else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(&mut *body).poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) || body.is_end_stream() {
            self.handed_over = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body
            .as_ref()
            .is_none_or(hyper::body::Body::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.as_ref().map_or_else(
            || hyper::body::SizeHint::with_exact(0),
            hyper::body::Body::size_hint,
        )
    }
}

/// A response body holding its upstream connection: at the body's end the
/// connection goes back to the pool; a body dropped before its end takes
/// the connection with it (hyper closes it), as its unread rest could not
/// be told apart from the next response. A backend that sends nothing
/// more for the backend timeout cuts the response short.
struct Leased {
    body: Incoming,
    lease: Option<(Upstream, Conn)>,
}

impl Leased {
    fn release(&mut self) {
        if let Some((upstream, conn)) = self.lease.take() {
            upstream.give_back(conn);
        }
    }

    /// The body has nothing ready: waits, for at most the backend timeout.
    fn wait(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let Some((upstream, conn)) = &mut self.lease else {
            return Poll::Pending;
        };
        std::task::ready!(conn.poll_expired(cx));
        let timeout = conn.timeout;
        tracing::warn!(
            backend = upstream.url(),
            "the backend sent nothing for {timeout:?}; cutting the response short"
        );
        // The connection is mid-response: it goes with the body.
        self.lease = None;
        Poll::Ready(Some(Err(ProxyError::TimedOut(timeout).into())))
    }
}

impl hyper::body::Body for Leased {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => return self.wait(cx),
        };
        match &frame {
            None => self.release(),
            Some(Ok(_)) if self.body.is_end_stream() => self.release(),
            Some(Ok(_)) => {
                // The next part gets the full timeout again.
                if let Some((_, conn)) = &mut self.lease {
                    conn.arm();
                }
            }
            Some(Err(_)) => self.lease = None,
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Leased {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304, Content-Length: 0) may be dropped
        // unpolled; its connection is free all the same.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hop_by_hop_header_is_removed_and_nothing_else() {
        for keep_upgrade in [false, true] {
            let mut headers = HeaderMap::new();
            for name in &HOP_BY_HOP {
                headers.insert(name.clone(), HeaderValue::from_static("x"));
            }
            headers.insert(
                header::CONNECTION,
                HeaderValue::from_static("close, X-Named"),
            );
            headers.insert("x-named", HeaderValue::from_static("named by Connection"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert("x-kept", HeaderValue::from_static("end to end"));
            strip_hop_by_hop(&mut headers, keep_upgrade, false);
            let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
            left.sort_unstable();
            let expected = if keep_upgrade {
                vec!["connection", "upgrade", "x-kept"]
            } else {
                vec!["x-kept"]
            };
            assert_eq!(left, expected, "keep_upgrade: {keep_upgrade}");
        }
    }

    #[test]
    fn a_request_keeps_te_trailers_and_names_it_in_connection() {
        for (te, kept) in [
            ("trailers", true),
            ("deflate;q=0.5, Trailers", true),
            ("deflate", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::TE, HeaderValue::from_static(te));
            headers.insert(header::TRAILER, HeaderValue::from_static("x-sum"));
            strip_hop_by_hop(&mut headers, false, true);
            assert_eq!(headers[header::TRAILER], "x-sum", "{te}");
            if kept {
                assert_eq!(headers[header::TE], "trailers", "{te}");
                assert_eq!(headers[header::CONNECTION], "te", "{te}");
            } else {
                assert!(!headers.contains_key(header::TE), "{te}");
                assert!(!headers.contains_key(header::CONNECTION), "{te}");
            }
            // A response's TE means nothing, and goes.
            let mut headers = HeaderMap::new();
            headers.insert(header::TE, HeaderValue::from_static(te));
            strip_hop_by_hop(&mut headers, false, false);
            assert!(headers.is_empty(), "{te}");
        }
    }

    #[test]
    fn a_transfer_coding_drops_content_length_and_unknown_ones_are_told() {
        for (coding, unknown) in [
            ("chunked", false),
            ("Chunked", false),
            (" , chunked", false),
            ("gzip, chunked", true),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
            headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static(coding));
            assert_eq!(
                strip_hop_by_hop(&mut headers, false, false),
                unknown,
                "{coding}"
            );
            assert!(headers.is_empty(), "{coding}: {headers:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert!(!strip_hop_by_hop(&mut headers, false, false));
        assert_eq!(headers.len(), 1, "no coding: the length stays");
    }

    #[test]
    fn cookie_fields_are_joined_into_one_header() {
        let cookies = |fields: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for field in fields {
                headers.append(header::COOKIE, HeaderValue::from_static(field));
            }
            join_cookies(&mut headers);
            let joined: Vec<&str> = headers
                .get_all(header::COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            joined.join(" | ")
        };
        assert_eq!(cookies(&[]), "");
        assert_eq!(cookies(&["a=1"]), "a=1");
        assert_eq!(cookies(&["a=1", "b=2", "c=3; d=4"]), "a=1; b=2; c=3; d=4");
    }
}
