//! The gateway's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, ValueEnum};
use http::uri::PathAndQuery;
use http::HeaderName;
use tower_sticky::sticky_core::MAX_WEIGHT;
use tower_sticky::Affinity;

/// A sticky-session reverse proxy built on tower-sticky.
///
/// With no --backend, three demo backends start in this process on loopback
/// ports; each answers with its name and a per-session visit counter kept
/// in its own memory, so `curl -c jar -b jar localhost:8080` shows
/// stickiness at once.
#[derive(Parser, Debug)]
#[command(name = "gateway", version)]
pub struct Args {
    /// Address to serve clients on. Port 0 takes a free port; the address
    /// actually bound is printed at start.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// A backend, as NAME=URL (http://host:port). Repeat for each backend.
    /// When given, no demo backends start.
    #[arg(long = "backend", value_name = "NAME=URL", value_parser = name_value)]
    pub backends: Vec<(String, String)>,

    /// A backend's weight, as NAME=N (default 1; 0 drains: bound cookie
    /// sessions stay, no new ones come, while hash keys on it move to their
    /// next backend). Weights go from 0 to 256.
    #[arg(long = "weight", value_name = "NAME=N", value_parser = name_weight)]
    pub weights: Vec<(String, u32)>,

    /// Puts a backend in a group, as NAME=GROUP, for two-tier balancing
    /// (e.g. A/B versions): group weights pick a group for a new session,
    /// backend weights pick inside it.
    #[arg(long = "group", value_name = "NAME=GROUP", value_parser = name_value)]
    pub groups: Vec<(String, String)>,

    /// A group's weight, as GROUP=N (default 1).
    #[arg(long = "group-weight", value_name = "GROUP=N", value_parser = name_weight)]
    pub group_weights: Vec<(String, u32)>,

    /// Where affinity comes from, tried in order (first present wins; a
    /// cookie that does not check out, or a route naming no backend,
    /// counts as absent, and a valid cookie listed after a route wins over
    /// it; a key listed before `cookie` places its session by itself, and a
    /// session moved off a failed backend returns to it when it is back):
    /// `cookie` (the signed load-balancer cookie), `header:NAME`,
    /// `app-cookie:NAME`, `route:NAME` (Tomcat `<id>.<route>` suffix in
    /// cookie NAME or the `;NAME=` path parameter), `query:NAME`, `ip`.
    /// Default: cookie.
    #[arg(long = "affinity", value_name = "SOURCE", value_parser = affinity)]
    pub affinity: Vec<Affinity>,

    /// Name of the load-balancer cookie.
    #[arg(long, value_name = "NAME", default_value = "sticky", value_parser = cookie_name)]
    pub cookie_name: String,

    /// Removes the load-balancer cookie from requests before they reach
    /// the backends (HAProxy's `indirect`): they never see it, and their
    /// own cookies reach them as sent.
    #[arg(long)]
    pub strip_cookie: bool,

    /// Marks the cookie Secure, so that browsers send it back over HTTPS
    /// only. Turn it on when clients reach the gateway over HTTPS (through
    /// a TLS terminator in front of it).
    #[arg(long)]
    pub cookie_secure: bool,

    /// The cookie's SameSite: `lax` (sent on requests from this site and
    /// on links followed from others), `strict` (from this site only: a
    /// visitor who arrives by a link from another site comes without it,
    /// and that request starts a new session, replacing theirs) or `none`
    /// (on every request, cross-site ones too; it makes the cookie Secure,
    /// which browsers keep only over HTTPS).
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = SameSitePolicy::Lax)]
    pub cookie_same_site: SameSitePolicy,

    /// The cookie's Domain, to share a session between subdomains
    /// (`example.com` also covers `www.example.com` and
    /// `shop.example.com`). Browsers drop the cookie when the host they
    /// asked for is neither DOMAIN nor under it, or when DOMAIN is a
    /// public suffix (`com`, `co.uk`): then every request starts a new
    /// session. Default: the host the client asked for, alone.
    #[arg(long, value_name = "DOMAIN", value_parser = cookie_domain)]
    pub cookie_domain: Option<String>,

    /// The cookie's Path: browsers send it only with requests under PATH.
    /// Requests elsewhere are placed as new sessions, each time, and their
    /// answers set no cookie, which would replace the session's. PATH is
    /// matched against the path the gateway receives, and browsers match
    /// it against theirs: behind a proxy that strips a prefix, leave it
    /// at /.
    #[arg(long, value_name = "PATH", default_value = "/", value_parser = cookie_path)]
    pub cookie_path: String,

    /// Longest life of a session from its first request, in seconds; also
    /// the cookie's Max-Age. Default: unlimited (a browser-session cookie).
    #[arg(long, value_name = "SECS")]
    pub max_age: Option<u64>,

    /// Longest gap between a session's requests, in seconds.
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,

    /// File of secrets, one per line, newest first: the first signs
    /// cookies, all verify them. Blank lines and lines starting with `#`
    /// are skipped. Without it, the STICKY_SECRET environment
    /// variable; without either, a random key (replicas will not agree).
    /// The gateway reads the file again on SIGHUP (which then no longer
    /// stops it) or `POST /keys/reload` on the admin listener, and keeps
    /// its keys if the file cannot be read or holds none it can use; write
    /// a new file beside it and rename it into place, so that no reading
    /// sees it half written. To rotate across replicas, in three steps,
    /// each on every replica before the next: list the new secret second;
    /// move it first (each session is then signed again on its next
    /// request); drop the old one once the sessions it signed may end
    /// (after --idle-timeout, if set, or once /metrics'
    /// sticky_gateway_older_key_cookies_total has stopped growing on
    /// every replica for as long as a session may last).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,

    /// What happens to a session whose backend is gone or failing:
    /// `rebalance` moves it (with a new cookie), `strict` answers 503.
    #[arg(long, value_enum, default_value_t = Failover::Rebalance)]
    pub failover: Failover,

    /// How many proxies in front of the gateway to trust in
    /// X-Forwarded-For (for `--affinity ip`). Default 0: the peer address.
    /// With 1 or more, the X-Forwarded-Proto and X-Forwarded-Host the
    /// nearest proxy sends are passed on to the backends; otherwise the
    /// gateway sets its own.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub trusted_proxies: usize,

    /// Address of the admin API and status page. Port 0 takes a free port;
    /// the address actually bound is printed at start.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,

    /// Forward the client's Host header (an HTTP/2 client's :authority)
    /// instead of the backend's.
    #[arg(long)]
    pub preserve_host: bool,

    /// Longest time, in seconds, a client connection may go with no
    /// request in progress (from its start, and from the end of each
    /// response, until the next request head is in; HTTP/1.1 and HTTP/2
    /// alike), or keep the gateway waiting for more of a request body or
    /// for room to write a response (over HTTP/2, on every stream in
    /// progress at once). Past it the client is disconnected (an idle
    /// HTTP/2 client after a GOAWAY). A slow but steady upload or reader,
    /// and a slow backend, are not cut. Connections to the admin listener
    /// are held to it too.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub client_timeout: u64,

    /// Longest wait for a backend, in seconds: for the response head once
    /// the whole request is handed over (a slow upload does not count,
    /// only one the backend stops taking), then between parts of the
    /// response body. Past it the client gets 504, or a response cut
    /// short. WebSocket tunnels have no limit.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub backend_timeout: u64,

    /// How long, in seconds, a connection to a backend may sit unused
    /// before the gateway closes it. Set it below the backends' own
    /// keep-alive timeout, so that a request seldom goes out on a
    /// connection the backend is closing. (When one does, a GET or other
    /// idempotent request without a body is sent again on a new
    /// connection; any other gets 502.)
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub backend_idle_timeout: u64,

    /// Checks each backend's health by requesting PATH (e.g. /healthz) on
    /// a new connection every --health-interval. A backend that fails
    /// --health-fall checks in a row (no 2xx or 3xx answer within
    /// --health-timeout) takes nothing until it passes --health-rise in a
    /// row: its sessions move (with a new cookie), or get 503 with
    /// --failover strict. A drained or disabled backend keeps that state
    /// when its checks pass again. A backend added through the admin API
    /// takes nothing until its first check passes. Default: no checks; failing requests
    /// alone take a backend out, for 10 seconds at a time.
    #[arg(long, value_name = "PATH", value_parser = health_path)]
    pub health_check: Option<PathAndQuery>,

    /// Seconds from one health check of a backend to its next (fractions
    /// allowed, e.g. 0.5). Each backend has its own timer; a check still
    /// under way when its next is due delays that one.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = seconds, requires = "health_check")]
    pub health_interval: Duration,

    /// Seconds a health check may take, connecting included (fractions
    /// allowed).
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = seconds, requires = "health_check")]
    pub health_timeout: Duration,

    /// Health checks passed in a row that return a failing backend to
    /// service.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000), requires = "health_check")]
    pub health_rise: u32,

    /// Health checks failed in a row that take a backend out of service.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000), requires = "health_check")]
    pub health_fall: u32,

    /// Logs one line per request as its response head goes out (or as it
    /// ends without one: status 499, `outcome=aborted`), at info level
    /// under the target `access`: the address the connection came from,
    /// method, path and query, status, the backend, how the request was
    /// placed and why, where its key came from, and the milliseconds to
    /// the response head. `RUST_LOG=warn,access=info` keeps these lines
    /// and drops the rest. A thread of their own writes them, several at
    /// once under load; if it falls 131,072 lines behind, further lines
    /// are dropped rather than hold requests up
    /// (`sticky_gateway_access_lines_dropped_total` counts them, and lines
    /// a failed write lost). At shutdown the gateway waits up to 5 s for
    /// the lines still queued.
    #[arg(long)]
    pub access_log: bool,

    /// Worker threads serving clients, each with its own event loop and
    /// upstream connections. Default: one per CPU.
    #[arg(long, value_name = "N")]
    pub threads: Option<std::num::NonZeroUsize>,

    /// Keep worker i on the i-th CPU the gateway may run on (Linux).
    ///
    /// Over again from the first CPU when there are more workers than
    /// CPUs; every other thread stays free to move. Like nginx's
    /// `worker_cpu_affinity` or HAProxy's `cpu-map`. Busy workers then
    /// never share a CPU while another has none, where each holds the
    /// other's requests up for its turn (a slice, 1.4 ms on two CPUs, or
    /// on kernels before 6.6 a tick, 4 ms at 250 Hz). Off by default, as
    /// a pinned worker cannot move off a CPU that something else keeps
    /// busy.
    #[arg(long)]
    pub pin_workers: bool,
}

/// The cookie's SameSite attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SameSitePolicy {
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=Lax`.
    Lax,
    /// `SameSite=None` (with `Secure`).
    None,
}

impl From<SameSitePolicy> for tower_sticky::SameSite {
    fn from(policy: SameSitePolicy) -> Self {
        match policy {
            SameSitePolicy::Strict => Self::Strict,
            SameSitePolicy::Lax => Self::Lax,
            SameSitePolicy::None => Self::None,
        }
    }
}

/// The failover policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Failover {
    /// Move the session to another backend, with a new cookie.
    Rebalance,
    /// Answer 503.
    Strict,
}

fn name_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() && !value.is_empty() => {
            Ok((name.to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

fn name_weight(s: &str) -> Result<(String, u32), String> {
    let (name, value) = name_value(s)?;
    match value.parse::<u32>() {
        Ok(n) if n <= MAX_WEIGHT => Ok((name, n)),
        _ => Err(format!(
            "weight {value:?} is not a whole number from 0 to {MAX_WEIGHT}"
        )),
    }
}

/// A query parameter's name as it stands in a query string: keys are
/// matched as sent, so a name with a space, `&`, `=` or `#` could never
/// match.
fn query_name(s: &str) -> Result<String, String> {
    if s.bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'&' | b'=' | b'#'))
    {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} cannot be a query parameter's name as sent (no spaces, &, = or #)"
        ))
    }
}

fn header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.as_bytes()).map_err(|_| format!("{s:?} is not a header name"))
}

fn cookie_name(s: &str) -> Result<String, String> {
    let token = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
    if !s.is_empty() && s.chars().all(token) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)"
        ))
    }
}

/// A cookie's Domain: a host name, labels of letters, digits and inner
/// `-`, up to 63 characters each, separated by single dots; a leading
/// dot, which browsers ignore, is allowed.
fn cookie_domain(s: &str) -> Result<String, String> {
    let name = s.strip_prefix('.').unwrap_or(s);
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() <= 253 && name.split('.').all(label) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a domain (labels of letters, digits and inner -, up to 63 \
             characters, separated by single dots)"
        ))
    }
}

/// A cookie's Path: from `/`, printable ASCII but `;`.
fn cookie_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && s.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a cookie path (it starts with /; no spaces or ;)"
        ))
    }
}

fn affinity(s: &str) -> Result<Affinity, String> {
    let (kind, name) = match s.split_once(':') {
        Some((kind, name)) => (kind, Some(name)),
        None => (s, None),
    };
    let named = |what: &str| {
        name.filter(|n| !n.is_empty())
            .ok_or_else(|| format!("{kind} needs a {what}: {kind}:NAME"))
    };
    match kind {
        "cookie" if name.is_none() => Ok(Affinity::Cookie),
        "ip" if name.is_none() => Ok(Affinity::ClientIp),
        "header" => Ok(Affinity::Header(header_name(named("header name")?)?)),
        "app-cookie" => Ok(Affinity::AppCookie(cookie_name(named("cookie name")?)?)),
        "route" => Ok(Affinity::Route(cookie_name(named("cookie name")?)?)),
        "query" => Ok(Affinity::Query(query_name(named("parameter name")?)?)),
        _ => Err(format!(
            "{s:?} is not a source; use cookie, header:NAME, app-cookie:NAME, route:NAME, query:NAME or ip"
        )),
    }
}

/// A health check's target: a path, with a query if wanted.
fn health_path(s: &str) -> Result<PathAndQuery, String> {
    if !s.starts_with('/') {
        return Err(format!(
            "{s:?} is not a path: a path starts with / (e.g. /healthz)"
        ));
    }
    if s.contains('#') {
        // A fragment is never sent; the check would request less than given.
        return Err(format!("{s:?} has a fragment (#...), which is never sent"));
    }
    s.parse::<PathAndQuery>()
        .map_err(|e| format!("{s:?} is not a path as sent (no spaces, for one): {e}"))
}

/// Seconds, fractions allowed, from 10 ms to a year.
fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if (0.01..=MAX_SECONDS as f64).contains(&secs) => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!(
            "{s:?} is not a number of seconds from 0.01 to {MAX_SECONDS} (a year)"
        )),
    }
}

/// Exits with status 2 and a message naming `flag`, as clap does for
/// values it rejects itself.
pub fn fail(flag: &str, message: impl std::fmt::Display) -> ! {
    Args::command()
        .error(ErrorKind::InvalidValue, format!("{flag}: {message}"))
        .exit()
}

impl Args {
    /// Checks what clap cannot: that names refer to backends that exist.
    pub fn check(&self, names: &[String]) {
        let known = |n: &String| names.contains(n);
        let mut seen = std::collections::HashSet::new();
        for (name, _) in &self.backends {
            if !seen.insert(name) {
                fail("--backend", format!("{name:?} is given twice"));
            }
        }
        for (name, _) in &self.weights {
            if !known(name) {
                fail("--weight", format!("no backend is named {name:?}"));
            }
        }
        for (name, _) in &self.groups {
            if !known(name) {
                fail("--group", format!("no backend is named {name:?}"));
            }
        }
        for (group, _) in &self.group_weights {
            if !self.groups.iter().any(|(_, g)| g == group) {
                fail(
                    "--group-weight",
                    format!("no backend is in group {group:?}"),
                );
            }
        }
        let seconds = [
            ("--max-age", self.max_age),
            ("--idle-timeout", self.idle_timeout),
            ("--client-timeout", Some(self.client_timeout)),
            ("--backend-timeout", Some(self.backend_timeout)),
            ("--backend-idle-timeout", Some(self.backend_idle_timeout)),
        ];
        for (flag, value) in seconds {
            match value {
                Some(0) => fail(flag, "must be at least 1 second"),
                Some(secs) if secs > MAX_SECONDS => fail(
                    flag,
                    format!("must be at most {MAX_SECONDS} seconds (a year)"),
                ),
                _ => {}
            }
        }
    }
}

/// The longest time any flag in seconds takes: a year, which is "never"
/// for a timeout or a session, and far from the clock's limits.
const MAX_SECONDS: u64 = 365 * 24 * 60 * 60;
