//! The tower-sticky gateway: a reverse proxy with sticky sessions.
//!
//! ```text
//! cargo run --release --example gateway
//! curl -c jar -b jar localhost:8080      # the same backend every time
//! open http://127.0.0.1:8081/            # status page and admin API
//! ```
//!
//! With no `--backend`, three demo backends start in this process; each
//! answers with its name and a per-session visit counter kept in its own
//! memory. See `--help` for every flag.

/// hyper, tokio and http allocate about twenty small blocks per proxied
/// request; mimalloc serves them from per-thread pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod access;
mod admin;
mod cli;
mod client;
mod connection;
mod cpus;
mod demo;
mod health;
mod keys;
mod latency;
mod proxy;
mod stall;
mod turns;
mod worker;

use std::convert::Infallible;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use http::Request;
use hyper::body::{Body as _, Incoming};
use tower::{Layer, ServiceExt};
use tower_sticky::sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
use tower_sticky::sticky_core::{BackendSpec, FailoverPolicy, PoolConfig};
use tower_sticky::{
    Affinity, Backends, ClientIp, CookieAttributes, Error, ResponseBody, Sticky, StickyLayer,
};

use cli::{fail, Args, Failover};
use proxy::{ProxyError, ProxyOptions, Upstream};

/// How long shutdown waits for requests under way.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long accepting pauses when it fails for want of files or memory
/// (as nginx does): trying again at once would fail again at once.
const ACCEPT_PAUSE: Duration = Duration::from_millis(500);

fn main() {
    let args = Args::parse();
    let access_log = init_logging(args.access_log);
    if args.access_log && !tracing::enabled!(target: "access", tracing::Level::INFO) {
        eprintln!(
            "warning: --access-log given, but RUST_LOG leaves out the target `access` at \
             level info: no access lines will show (add `access=info`)"
        );
    }
    let workers = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n.get(),
    );
    // The main thread accepts connections, runs the admin API (and the
    // demo backends); the workers serve the clients.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|error| {
            eprintln!("error: cannot start the runtime: {error}");
            std::process::exit(1);
        });
    let workers = runtime.block_on(run(args, workers));
    for worker in workers {
        let _ = worker.join();
    }
    if let Some(access_log) = access_log {
        if !access_log.finish(access::FINISH) {
            tell(format_args!(
                "gave up waiting after {:?} for the access log's last lines",
                access::FINISH
            ));
        }
    }
}

/// Sets up the log on standard error, filtered by `RUST_LOG` (default
/// `info`). With `access_log`, access lines (the target `access`) go
/// through a thread of their own, which writes all that have come every
/// few milliseconds: one `write(2)` per request on the workers would cost
/// more than the rest of the line. Then the returned [`access::Finisher`]
/// waits for the lines still queued at shutdown.
fn init_logging(access_log: bool) -> Option<access::Finisher> {
    use tracing_subscriber::prelude::*;
    // Colour for a person at a terminal only: a log piped to a file or a
    // collector stays plain text. NO_COLOR turns it off as well.
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let is_access = |metadata: &tracing::Metadata<'_>| metadata.target() == "access";
    let (access, finisher) = match access_log.then(|| access::Writer::start(std::io::stderr())) {
        Some(Ok((writer, finisher))) => {
            writer.count_for_metrics();
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(ansi)
                .with_filter(tracing_subscriber::filter::filter_fn(is_access));
            (Some(layer), Some(finisher))
        }
        Some(Err(error)) => {
            eprintln!("error: cannot start the access log's thread: {error}");
            std::process::exit(1);
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .with_filter(tracing_subscriber::filter::filter_fn(move |m| {
                    !is_access(m)
                })),
        )
        .with(access)
        .init();
    finisher
}

/// Serves until SIGINT or SIGTERM and the end of the requests under way;
/// returns the worker threads, to be joined.
async fn run(args: Args, workers: usize) -> Vec<std::thread::JoinHandle<()>> {
    let backends_given: Vec<(String, String)> = if args.backends.is_empty() {
        let mut started = Vec::new();
        for name in ["b1", "b2", "b3"] {
            match demo::start(name).await {
                Ok(address) => started.push((name.to_owned(), format!("http://{address}"))),
                Err(error) => {
                    eprintln!("error: could not start demo backend {name}: {error}");
                    std::process::exit(1);
                }
            }
        }
        started
    } else {
        args.backends.clone()
    };
    let names: Vec<String> = backends_given.iter().map(|(n, _)| n.clone()).collect();
    args.check(&names);

    let options = ProxyOptions {
        preserve_host: args.preserve_host,
        workers,
        backend_timeout: Duration::from_secs(args.backend_timeout),
        backend_idle_timeout: Duration::from_secs(args.backend_idle_timeout),
        trust_forwarded: args.trusted_proxies > 0,
    };
    let mut members = Vec::new();
    for (name, url) in &backends_given {
        let upstream = Upstream::new(url, &options).unwrap_or_else(|e| fail("--backend", e));
        let mut spec = BackendSpec::new(name.as_str());
        if let Some((_, w)) = args.weights.iter().rev().find(|(n, _)| n == name) {
            spec = spec.weight(*w);
        }
        if let Some((_, g)) = args.groups.iter().rev().find(|(n, _)| n == name) {
            spec = spec.group(g.as_str());
        }
        members.push((spec, upstream));
    }

    let mut token = TokenConfig::new(args.cookie_name.clone());
    if let Some(secs) = args.max_age {
        token = token.max_lifetime(Duration::from_secs(secs));
    }
    if let Some(secs) = args.idle_timeout {
        token = token.idle_timeout(Duration::from_secs(secs));
    }
    let (ring, key_source) = key_ring(&args);
    let config = PoolConfig::new(TokenCodec::new(ring, token))
        .failover(match args.failover {
            Failover::Rebalance => FailoverPolicy::Rebalance,
            Failover::Strict => FailoverPolicy::Strict,
        })
        .schedule_seed(random_u64());
    let backends = Backends::new(config, members).unwrap_or_else(|e| fail("--backend", e));
    for (group, weight) in &args.group_weights {
        backends
            .set_group_weight(group.as_str(), *weight)
            .unwrap_or_else(|e| fail("--group-weight", e));
    }

    let chain = if args.affinity.is_empty() {
        vec![Affinity::Cookie]
    } else {
        args.affinity.clone()
    };
    let client_ip = match args.trusted_proxies {
        0 => ClientIp::Peer,
        hops => ClientIp::TrustedHops(hops),
    };
    let sticky = StickyLayer::new()
        .affinity(chain)
        .client_ip(client_ip)
        // A client that stopped sending its request body is its own
        // failure, not the backend's.
        .failure_errors(|error| !client_body_failed(error))
        .strip_cookie(args.strip_cookie)
        .cookie_attributes(CookieAttributes {
            path: args.cookie_path.clone(),
            domain: args.cookie_domain.clone(),
            secure: args.cookie_secure,
            same_site: args.cookie_same_site.into(),
            ..CookieAttributes::default()
        })
        .layer(backends.clone());

    if let Some(path) = args.health_check.clone() {
        tokio::spawn(health::run(
            backends.clone(),
            health::Checks {
                path,
                interval: args.health_interval,
                timeout: args.health_timeout,
                policy: tower_sticky::sticky_core::CheckPolicy {
                    rise: args.health_rise,
                    fall: args.health_fall,
                },
            },
        ));
    }

    let keys = keys::Keys::new(key_source, backends.clone());
    if matches!(keys.source(), keys::Source::File(_)) {
        // Only then: otherwise SIGHUP could read nothing again, and keeps
        // its usual effect of stopping the process.
        tokio::spawn(keys::reload_on_hangup(keys.clone()));
    }

    let (listener, address) = bind(args.listen, "--listen").await;
    let (admin_listener, admin_address) = bind(args.admin_listen, "--admin-listen").await;
    // The bound addresses, so that port 0 (any free port) can be found.
    announce(format_args!("gateway listening on http://{address}"));
    announce(format_args!(
        "admin and status page on http://{admin_address}"
    ));
    for (name, url) in &backends_given {
        // As the admin API shows it: with its port, :80 if none was given.
        let url = backends
            .service(name)
            .map_or_else(|| url.clone(), |upstream| upstream.url().to_owned());
        announce(format_args!("  backend {name} at {url}"));
    }
    if args.backends.is_empty() {
        announce(format_args!("try: curl -c jar -b jar http://{address}/"));
    }

    let client_timeout = Duration::from_secs(args.client_timeout);
    // Each connection holds a receiver until it ends; the sender says
    // when to stop, and finds out when all of them have ended.
    let (stop, _) = tokio::sync::watch::channel(false);
    let admin = tokio::spawn(serve_admin(
        admin_listener,
        admin::router(backends, options, args.health_check.is_some(), keys),
        client_timeout,
        stop.subscribe(),
    ));
    let cpus = if args.pin_workers {
        cpus::allowed()
    } else {
        Vec::new()
    };
    turns::init(workers);
    let mut queues = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for index in 0..workers {
        let (queue, accepted) = tokio::sync::mpsc::unbounded_channel();
        queues.push(queue);
        threads.push(worker(
            index,
            (!cpus.is_empty()).then(|| cpus[index % cpus.len()]),
            sticky.clone(),
            client_timeout,
            args.access_log,
            accepted,
        ));
    }
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let mut next = 0;
    loop {
        tokio::select! {
            (stream, peer) = next_connection(&listener) => {
                let _ = stream.set_nodelay(true);
                // Off this thread's reactor, onto the worker's.
                let stream = match stream.into_std() {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "accepted connection lost");
                        continue;
                    }
                };
                // The next worker in turn. A worker that has stopped (it
                // can only have panicked) is dropped from the turn; with
                // none left the gateway cannot serve, and says so by exiting.
                let mut connection = Accepted { stream, peer, stop: stop.subscribe() };
                loop {
                    if queues.is_empty() {
                        tell(format_args!("error: every worker thread has stopped"));
                        std::process::exit(1);
                    }
                    next %= queues.len();
                    match queues[next].send(connection) {
                        Ok(()) => {
                            next += 1;
                            break;
                        }
                        Err(returned) => {
                            tracing::error!("a worker thread has stopped; serving on the others");
                            queues.remove(next);
                            connection = returned.0;
                        }
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
    // A second signal, as from a second Ctrl-C, stops without waiting.
    let again = shutdown_signal();
    drop(listener);
    tell(format_args!(
        "shutting down: finishing requests under way (a second signal stops at once)"
    ));
    tokio::select! {
        _ = async {
            stop.send_replace(true);
            stop.closed().await;
        } => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tell(format_args!("gave up waiting after {DRAIN_TIMEOUT:?}"));
        }
        () = again => tell(format_args!("second signal: stopping without waiting")),
    }
    // Closing the queues stops the workers.
    drop(queues);
    let _ = admin.await;
    threads
}

/// A client connection accepted on the main thread, for a worker.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    /// Turns true when the gateway shuts down.
    stop: tokio::sync::watch::Receiver<bool>,
}

/// Starts worker thread `index`: a single-threaded runtime serving the
/// connections it is handed until its queue closes. Everything a request
/// touches (its client connection, its upstream connection) stays on the
/// worker, as in an event-loop proxy: no task hops between threads.
/// With `cpu`, the worker runs on that CPU only. Returns once the worker
/// runs; exits the process if it cannot start.
fn worker(
    index: usize,
    cpu: Option<usize>,
    sticky: Sticky<Upstream>,
    client_timeout: Duration,
    access_log: bool,
    accepted: tokio::sync::mpsc::UnboundedReceiver<Accepted>,
) -> std::thread::JoinHandle<()> {
    let (started, start) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name(format!("gateway-worker-{index}"))
        .spawn(move || {
            worker::enter(index);
            let mut runtime = tokio::runtime::Builder::new_current_thread();
            runtime.enable_all();
            if let Some(unpinned) = cpu.and_then(|cpu| cpus::pin(index, cpu)) {
                // The runtime's blocking threads start from the worker's
                // one CPU; they get back the CPUs it had.
                runtime.on_thread_start(move || unpinned.restore());
            }
            let runtime = runtime.build();
            match runtime {
                Ok(runtime) => {
                    let _ = started.send(Ok(()));
                    runtime.block_on(serve(sticky, client_timeout, access_log, accepted));
                }
                Err(error) => {
                    let _ = started.send(Err(error));
                }
            }
        });
    let thread = spawned.unwrap_or_else(|error| {
        eprintln!("error: cannot start worker thread {index}: {error}");
        std::process::exit(1);
    });
    // A worker that cannot start stops the gateway now, rather than
    // leaving it to serve short of a worker.
    match start.recv() {
        Ok(Ok(())) => thread,
        Ok(Err(error)) => {
            eprintln!("error: cannot start worker {index}'s runtime: {error}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("error: worker thread {index} stopped as it started");
            std::process::exit(1);
        }
    }
}

/// A worker's loop: serves each connection it is handed, on this thread.
/// A client connection idle for `client_timeout`, or keeping the gateway
/// waiting on it for that long mid-request, is closed. With `access_log`,
/// each request is logged as its response head goes out.
async fn serve(
    sticky: Sticky<Upstream>,
    client_timeout: Duration,
    access_log: bool,
    mut accepted: tokio::sync::mpsc::UnboundedReceiver<Accepted>,
) {
    let protocols = connection::Protocols::new();
    while let Some(Accepted { stream, peer, stop }) = accepted.recv().await {
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "accepted connection lost");
                continue;
            }
        };
        let sticky = sticky.clone();
        let activity = client::Activity::new();
        let requests = std::sync::Arc::clone(&activity);
        let drain = stop.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            turns::request_started();
            let (started, upload) = requests.start(&request);
            // Boxed: a pointer, not the record, in every request's future.
            let access = access_log
                .then(|| Box::new(access::Access::start(peer, request.method(), request.uri())));
            request.extensions_mut().insert(peer);
            if let Some(upload) = upload {
                request.extensions_mut().insert(upload);
            }
            let tunnel = request
                .headers()
                .contains_key(http::header::UPGRADE)
                .then(|| proxy::Drain::new(drain.clone()));
            if let Some(tunnel) = &tunnel {
                request.extensions_mut().insert(tunnel.clone());
            }
            let call = match refusal(&request) {
                None => Ok(sticky.clone().oneshot(request)),
                Some(refused) => Err(refused),
            };
            async move {
                let mut response = match call {
                    Ok(call) => match call.await {
                        Ok(response) => {
                            if let Some(access) = access {
                                access.log(&response, access::Fate::Placed);
                            }
                            response
                        }
                        Err(error) => {
                            let response = error_response(&error).map(ResponseBody::new);
                            if let Some(access) = access {
                                let fate = if client_body_failed(&error) {
                                    access::Fate::ClientFailed(&error)
                                } else {
                                    access::Fate::Failed(&error)
                                };
                                access.log(&response, fate);
                            }
                            response
                        }
                    },
                    Err((status, why)) => {
                        tracing::debug!(status = status.as_u16(), "request refused: {why}");
                        let response = proxy::text(status, why).map(ResponseBody::new);
                        if let Some(access) = access {
                            access.log(&response, access::Fate::Refused);
                        }
                        response
                    }
                };
                // A WebSocket is under way on its backend until its tunnel
                // closes, not when the empty body of its 101 ends.
                if let Some(tunnel) = tunnel {
                    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        if let Some(in_flight) = response.body_mut().take_in_flight() {
                            tunnel.keep(in_flight);
                        }
                    }
                }
                Ok::<_, Infallible>(response.map(|body| started.track(body)))
            }
        });
        let stream = stall::Watched::new(stream, activity.writing());
        let connection = protocols.serve(stream, service);
        let timer = client::ClientTimer::new(activity, client_timeout);
        if access_log {
            tokio::spawn(async move {
                if let Some(error) = client::drive(connection, timer, stop).await {
                    access::unparsed(peer, &*error);
                }
            });
        } else {
            tokio::spawn(client::drive(connection, timer, stop));
        }
    }
}

/// Serves the admin API `app` on `listener` until `stop` turns true. Its
/// connections are kept as the workers' are: under the client timeout,
/// and closed politely at shutdown, which waits for them.
async fn serve_admin(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    client_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let protocols = connection::Protocols::new();
    loop {
        let stream = tokio::select! {
            (stream, _) = next_connection(&listener) => stream,
            _ = stop.wait_for(|&stopped| stopped) => return,
        };
        let activity = client::Activity::new();
        let requests = std::sync::Arc::clone(&activity);
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let (started, upload) = requests.start(&request);
            let request =
                request.map(|body| axum::body::Body::new(client::Uploading::new(body, upload)));
            let call = app.clone().oneshot(request);
            async move {
                let response = call.await?;
                Ok::<_, Infallible>(response.map(|body| started.track(body)))
            }
        });
        let stream = stall::Watched::new(stream, activity.writing());
        let connection = protocols.serve(stream, service);
        let timer = client::ClientTimer::new(activity, client_timeout);
        tokio::spawn(client::drive(connection, timer, stop.clone()));
    }
}

/// The next connection on `listener`. Failures are passed over: one for
/// the connection's own sake (its client went away first) at once; one
/// for want of files or memory after a pause, during which connections
/// wait in the listen queue.
async fn next_connection(
    listener: &tokio::net::TcpListener,
) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(error) if is_connection_error(&error) => {
                tracing::debug!(%error, "accept failed");
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed; pausing for {ACCEPT_PAUSE:?}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

/// The status and reason with which the gateway answers `request` itself,
/// before choosing a backend, if it does:
/// - more than one Host header, or none in HTTP/1.1: 400, as RFC 9112
///   (3.2) has a server answer, so that the gateway and a backend cannot
///   take a request for two different hosts;
/// - CONNECT: 501; a reverse proxy opens no tunnels, and passing CONNECT
///   on would make a backend that is itself a forward proxy an open one;
/// - a body in a transfer coding other than chunked: 501; the gateway can
///   neither decode it nor pass it on as it came (RFC 9112, 6.1).
fn refusal(request: &Request<Incoming>) -> Option<(http::StatusCode, &'static str)> {
    let mut hosts = request.headers().get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => {
            return Some((http::StatusCode::BAD_REQUEST, "more than one Host header"));
        }
        (None, _) if request.version() == http::Version::HTTP_11 => {
            return Some((http::StatusCode::BAD_REQUEST, "no Host header"));
        }
        (Some(host), _) if !is_host(host.as_bytes()) => {
            return Some((
                http::StatusCode::BAD_REQUEST,
                "the Host header is not a host",
            ));
        }
        _ => {}
    }
    if let Some(authority) = request.uri().authority() {
        if !is_host(authority.as_str().as_bytes()) {
            return Some((
                http::StatusCode::BAD_REQUEST,
                "the request target's authority is not a host",
            ));
        }
    }
    if request.method() == http::Method::CONNECT {
        return Some((
            http::StatusCode::NOT_IMPLEMENTED,
            "this gateway does not open tunnels (CONNECT)",
        ));
    }
    // Only a body of unknown length can have come in a transfer coding.
    let body = request.body();
    if body.is_end_stream() || body.size_hint().exact().is_some() {
        return None;
    }
    proxy::unknown_transfer_coding(request.headers()).then_some((
        http::StatusCode::NOT_IMPLEMENTED,
        "transfer codings other than chunked are not supported",
    ))
}

/// Whether a backend's error comes from the client's request body: the
/// client closed the connection, or the upload broke off, while the body
/// was on its way to the backend (hyper's client reports the body it was
/// given failing as a user error).
fn client_body_failed(error: &(dyn std::error::Error + 'static)) -> bool {
    proxy::error_chain(error).any(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
    })
}

/// Whether a backend's error is for a request that never reached it.
fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        error.downcast_ref::<ProxyError>(),
        Some(ProxyError::Failed(inner)) if inner.is::<tower_sticky::Unsent<Incoming>>()
    )
}

/// Whether `value` can be a Host header or a target's authority (RFC 9112,
/// 3.2; RFC 3986, 3.2.2 and 3.2.3): a host name or address, and a port,
/// with no user information, path, space or control character. A backend
/// or an app that builds links from it could read anything else its own
/// way.
fn is_host(value: &[u8]) -> bool {
    value.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
            )
    })
}

/// 503 for a session that may not move (strict mode) or no backend at
/// all; 504 for a backend that did not answer in time; 502 for a backend
/// that failed.
fn error_response(error: &Error) -> http::Response<proxy::Body> {
    if client_body_failed(error) {
        // Not the backend's failure, nor an answer for want of one.
        let cause = root_cause(error);
        tracing::debug!(%error, %cause, "request body broke off");
        return proxy::text(
            http::StatusCode::BAD_REQUEST,
            "the request body did not arrive whole",
        );
    }
    let (status, message) = match error {
        Error::Rejected(_) => (error.status(), "no backend can serve this session"),
        Error::Backend { source, .. }
            if matches!(
                source.downcast_ref::<ProxyError>(),
                Some(ProxyError::TimedOut(_))
            ) =>
        {
            (
                http::StatusCode::GATEWAY_TIMEOUT,
                "the backend did not answer in time",
            )
        }
        Error::Backend { source, .. } if never_sent(source.as_ref()) => {
            (error.status(), "the backend could not be reached")
        }
        Error::Backend { .. } => (
            error.status(),
            "the backend closed the connection without an answer, or with one that cannot be passed on",
        ),
    };
    let cause = root_cause(error);
    tracing::warn!(%error, %cause, status = status.as_u16(), "request failed: {message}");
    proxy::ERROR_ANSWERS.count(status);
    proxy::text(status, message)
}

/// The innermost error under `error`: what went wrong, without the
/// wrappers' words (each of which repeats its source's).
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    proxy::error_chain(error)
        .last()
        .map_or_else(String::new, ToString::to_string)
}

/// Binds `address` (or exits naming `flag`); returns the listener and the
/// address it got, which differs from `address` when its port is 0.
async fn bind(address: SocketAddr, flag: &str) -> (tokio::net::TcpListener, SocketAddr) {
    let bound = async {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let local = listener.local_addr()?;
        Ok::<_, std::io::Error>((listener, local))
    };
    bound.await.unwrap_or_else(|e| {
        eprintln!("error: {flag} {address}: {e}");
        std::process::exit(1);
    })
}

/// Whether an accept failed for the connection's own sake (its client
/// went away first), not the gateway's.
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
    )
}

/// The key ring and where it came from: --secret-file, else
/// STICKY_SECRET, else a random key.
fn key_ring(args: &Args) -> (KeyRing, keys::Source) {
    if let Some(path) = &args.secret_file {
        let ring = keys::read_file(path).unwrap_or_else(|e| fail("--secret-file", e));
        return (ring, keys::Source::File(path.clone()));
    }
    if let Ok(secret) = std::env::var("STICKY_SECRET") {
        let ring = KeyRing::new([secret.trim()]).unwrap_or_else(|e| fail("STICKY_SECRET", e));
        return (ring, keys::Source::Environment);
    }
    let mut secret = [0u8; 32];
    if let Err(error) = getrandom::fill(&mut secret) {
        eprintln!("error: no random source for a key: {error}");
        std::process::exit(1);
    }
    eprintln!(
        "warning: no --secret-file or STICKY_SECRET: using a random key; \
         cookies will not survive a restart and replicas will not agree"
    );
    let ring = KeyRing::new([secret]).unwrap_or_else(|e| fail("--secret-file", e));
    (ring, keys::Source::Random)
}

/// Writes a line to standard output, where the gateway says where it
/// listens. A closed output does not stop the gateway (`println!` would
/// panic).
fn announce(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Writes a line to standard error once the gateway serves. A terminal
/// gone away (or a closed pipe) must not turn a shutdown into a panic.
fn tell(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Resolves at SIGINT or SIGTERM received after this call: the handlers
/// are in place when it returns, not when the future is first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let wait = |signal: std::io::Result<tokio::signal::unix::Signal>| async move {
                match signal {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {}
                () = wait(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
