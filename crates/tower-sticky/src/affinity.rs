//! Where affinity keys come from: an ordered chain of sources read from
//! the request's parts; the first source present wins (a route, which may
//! name no backend, leaves the walk to go on, and a hash key ends it).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderName, COOKIE, FORWARDED};
use http::request::Parts;
use http::HeaderMap;
use sticky_core::{Decision, KeyKind};

/// One place to find an affinity key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Affinity {
    /// The load-balancer cookie (and the token header, if configured): an
    /// authenticated token issued by this layer.
    Cookie,
    /// A request header (or gRPC metadata entry), hashed.
    Header(HeaderName),
    /// An application's own cookie (e.g. `JSESSIONID`), hashed.
    AppCookie(String),
    /// A Tomcat-style route suffix, `<id>.<route>`, in the cookie of this
    /// name or in the `;name=<id>.<route>` path parameter. The route maps to
    /// the backend whose route name it is.
    Route(String),
    /// A query parameter, hashed: its first non-empty value, as sent (not
    /// percent-decoded).
    Query(String),
    /// The client's IP address (see [`ClientIp`]), hashed. The peer
    /// address comes from a `SocketAddr` request extension, or with the
    /// `axum` feature from axum's `ConnectInfo<SocketAddr>` (serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`). A request
    /// without one is placed by the next key, and a warning is logged the
    /// first time.
    ClientIp,
}

/// Which source placed a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// The load-balancer cookie.
    Cookie,
    /// The token header (see `StickyLayer::token_header`).
    TokenHeader,
    /// A request header.
    Header,
    /// An application cookie.
    AppCookie,
    /// A route suffix.
    Route,
    /// A query parameter.
    Query,
    /// The client IP.
    ClientIp,
    /// No key: placed by weight.
    None,
}

impl KeySource {
    /// Lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::Cookie => "cookie",
            KeySource::TokenHeader => "token-header",
            KeySource::Header => "header",
            KeySource::AppCookie => "app-cookie",
            KeySource::Route => "route",
            KeySource::Query => "query",
            KeySource::ClientIp => "ip",
            KeySource::None => "none",
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which forwarding headers to believe for the client IP.
///
/// The default trusts none: the client IP is the peer address of the
/// connection (a `SocketAddr` request extension). Forwarded headers are
/// spoofable by anyone unless a proxy you run sets them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ClientIp {
    /// The peer address only.
    #[default]
    Peer,
    /// `X-Forwarded-For` (or `Forwarded: for=`), trusting this many proxies
    /// in front: the client is the address that many entries from the right.
    TrustedHops(usize),
    /// `X-Forwarded-For` (or `Forwarded: for=`), trusting proxies in these
    /// networks: the client is the rightmost address not in them, provided
    /// the peer itself is in them.
    TrustedNetworks(Vec<IpNetwork>),
}

/// An IP network such as `10.0.0.0/8` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix: u8,
}

/// Why an [`IpNetwork`] did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpNetworkError(String);

impl fmt::Display for IpNetworkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an IP network like 10.0.0.0/8 or fd00::/8",
            self.0
        )
    }
}

impl std::error::Error for IpNetworkError {}

impl std::str::FromStr for IpNetwork {
    type Err = IpNetworkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IpNetworkError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(err)?,
            None => max,
        };
        Ok(IpNetwork { addr, prefix })
    }
}

impl IpNetwork {
    /// Whether `ip` is in the network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Bounds on how much of a request the layer reads looking for keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of `Cookie` headers read, all headers together.
    pub cookie_bytes: usize,
    /// Cookies read, all headers together.
    pub cookies: usize,
    /// Forwarding hops read from `X-Forwarded-For` / `Forwarded`.
    pub forwarded_hops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cookie_bytes: 16 * 1024,
            cookies: 200,
            forwarded_hops: 64,
        }
    }
}

/// The keys found in one request, owned (hash keys of an IP are built).
#[derive(Debug, Default)]
pub(crate) struct Found<'a> {
    pub(crate) token: Option<&'a str>,
    pub(crate) route: Option<&'a str>,
    pub(crate) hash: Option<HashKey<'a>>,
    pub(crate) sources: Sources,
    /// Whether the walk reached [`Affinity::Cookie`], so that a token
    /// handed out now would be read on the session's next request. A hash
    /// key found before it ends the walk: the key keeps placing the
    /// session, and a token would never be read.
    pub(crate) reads_token: bool,
}

/// Where a request's token and its other key came from.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sources {
    /// The token's: the cookie or the token header.
    pub(crate) token: Option<KeySource>,
    /// The hash key's.
    pub(crate) key: Option<KeySource>,
}

impl Sources {
    /// The source of the key that placed `decision`; [`KeySource::None`]
    /// when the weights placed it.
    pub(crate) fn of(self, decision: &Decision) -> KeySource {
        let source = match decision.key {
            Some(KeyKind::Token) => self.token,
            Some(KeyKind::Route) => Some(KeySource::Route),
            Some(KeyKind::Hash) => self.key,
            None => None,
        };
        source.unwrap_or(KeySource::None)
    }
}

#[derive(Debug)]
pub(crate) enum HashKey<'a> {
    Borrowed(&'a [u8]),
    Ip([u8; 16]),
}

impl HashKey<'_> {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            HashKey::Borrowed(b) => b,
            HashKey::Ip(b) => b,
        }
    }
}

/// Every cookie of every `Cookie` header, within the limits, as raw
/// bytes: `(name, value)`, spaces around each trimmed and the value's
/// quotes removed.
///
/// A request `Cookie` header is only `name=value` pairs separated by `;`
/// (RFC 6265 §4.2), so it is scanned in place: no allocation, and no
/// parsing of pairs nobody asked for. Browsers send every cookie of the
/// site in one header (analytics, consent, preferences: often dozens),
/// and only the one or two the layer looks for are checked as UTF-8.
/// (Cookies the layer writes are built with the `cookie` crate.)
///
/// The header is split as bytes, so a pair that is not UTF-8, or one with
/// bytes outside visible ASCII (another cookie's `José`, say), costs only
/// itself: the pairs around it are read as usual.
pub(crate) fn cookies<'a>(
    headers: &'a HeaderMap,
    limits: &Limits,
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    let mut budget = limits.cookie_bytes;
    headers
        .get_all(COOKIE)
        .iter()
        .take_while(move |v| {
            let ok = v.len() <= budget;
            budget = budget.saturating_sub(v.len());
            ok
        })
        .flat_map(|v| pairs(v.as_bytes()))
        .take(limits.cookies)
        .filter_map(|pair| {
            let at = memchr::memchr(b'=', pair)?;
            let name = trim_spaces(&pair[..at]);
            let value = trim_spaces(&pair[at + 1..]);
            let value = match value {
                [b'"', inner @ .., b'"'] => inner,
                _ => value,
            };
            (!name.is_empty()).then_some((name, value))
        })
}

/// The `;`-separated pieces of a `Cookie` header's value, as
/// `<[u8]>::split` gives them, found with `memchr`: the LB cookie is one
/// of many in a browser's header, and every byte before it is passed
/// over.
pub(crate) fn pairs(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let bytes = rest?;
        match memchr::memchr(b';', bytes) {
            Some(at) => {
                rest = Some(&bytes[at + 1..]);
                Some(&bytes[..at])
            }
            None => {
                rest = None;
                Some(bytes)
            }
        }
    })
}

/// `bytes` without the spaces at either end.
fn trim_spaces(mut bytes: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' '] = bytes {
        bytes = rest;
    }
    bytes
}

/// The values of the cookies with any of `names`, in order; a value that
/// is not UTF-8 is skipped.
fn named<'a, 'n, N: AsRef<str>>(
    headers: &'a HeaderMap,
    names: &'n [N],
    limits: &Limits,
) -> impl Iterator<Item = &'a str> + use<'a, 'n, N> {
    cookies(headers, limits)
        .filter(|(name, _)| names.iter().any(|n| n.as_ref().as_bytes() == *name))
        .filter_map(|(_, value)| std::str::from_utf8(value).ok())
}

/// At most this many differing copies of the LB cookie are tried, so that
/// a request cannot make the layer check a signature per cookie it sends.
const LB_COOKIE_COPIES: usize = 4;

/// The LB cookie's value (under any of `names`). Browsers keep one cookie
/// per name, Domain and Path, and send the more specific first, so a stale
/// copy left under another Path or Domain can come before the live one.
/// When copies differ, the first of up to [`LB_COOKIE_COPIES`] that
/// `opens` wins; when none does, the first, which then counts as invalid.
fn lb_cookie<'a>(
    headers: &'a HeaderMap,
    names: &[String],
    limits: &Limits,
    opens: &dyn Fn(&str) -> bool,
) -> Option<&'a str> {
    let mut copies = named(headers, names, limits);
    let first = copies.next()?;
    let mut others = copies.filter(|value| *value != first).peekable();
    if others.peek().is_none() {
        return Some(first);
    }
    std::iter::once(first)
        .chain(others)
        .take(LB_COOKIE_COPIES)
        .find(|value| opens(value))
        .or(Some(first))
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str, limits: &Limits) -> Option<&'a str> {
    named(headers, std::slice::from_ref(&name), limits).next()
}

/// The first non-empty value of query parameter `name`, as sent (not
/// percent-decoded).
fn query<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .uri
        .query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v)
}

/// The `;name=value` path parameter (any path segment).
fn path_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    path.split(';').skip(1).find_map(|param| {
        let (k, v) = param.split_once('=')?;
        (k.eq_ignore_ascii_case(name)).then(|| v.split('/').next().unwrap_or(v))
    })
}

fn route_suffix(value: &str) -> Option<&str> {
    value
        .rsplit_once('.')
        .map(|(_, route)| route)
        .filter(|r| !r.is_empty())
}

fn ip_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Says once per process that `Affinity::ClientIp` found no peer
/// address, which otherwise shows only as requests placed by weight.
fn no_peer_address() {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "Affinity::ClientIp: a request came without the peer's address, so the next \
             key (or the weights) placed it; put a SocketAddr in the request's extensions, \
             or with axum serve with into_make_service_with_connect_info::<SocketAddr>() \
             and enable tower-sticky's `axum` feature"
        );
    }
}

/// The peer address: a `SocketAddr` extension (set by the server glue),
/// or, with the `axum` feature, axum's `ConnectInfo<SocketAddr>`.
fn peer(parts: &Parts) -> Option<IpAddr> {
    let plain = parts.extensions.get::<SocketAddr>();
    #[cfg(feature = "axum")]
    let plain = plain.or_else(|| {
        parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|info| &info.0)
    });
    plain.map(|a| a.ip())
}

/// The last `max` nodes of the forwarding chain, nearest proxy first: from
/// `X-Forwarded-For`, or `Forwarded: for=` when there is none. Read from
/// the right and never past `max`, so a long chain costs no more than a
/// short one. An entry that is not an address keeps its place as `None`.
fn forwarded_nodes(headers: &HeaderMap, max: usize) -> Vec<Option<IpAddr>> {
    let values = |name| {
        headers
            .get_all(name)
            .iter()
            .rev()
            .map(|v| v.to_str().unwrap_or(""))
    };
    if headers.contains_key("x-forwarded-for") {
        values(HeaderName::from_static("x-forwarded-for"))
            .flat_map(|v| v.rsplit(','))
            .take(max)
            .map(parse_node)
            .collect()
    } else {
        values(FORWARDED)
            .flat_map(|v| v.rsplit(','))
            .take(max)
            .map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_node(v))?
                })
            })
            .collect()
    }
}

/// `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:443"`, `2001:db8::1`.
pub(crate) fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Ok(sock) = node.parse::<SocketAddr>() {
        return Some(sock.ip());
    }
    node.strip_prefix('[')
        .and_then(|n| n.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

/// The client IP under `policy`.
pub(crate) fn client_ip(parts: &Parts, policy: &ClientIp, limits: &Limits) -> Option<IpAddr> {
    let ip = client_ip_of(parts, policy, limits);
    if ip.is_none() && peer(parts).is_none() {
        no_peer_address();
    }
    ip
}

fn client_ip_of(parts: &Parts, policy: &ClientIp, limits: &Limits) -> Option<IpAddr> {
    let peer = peer(parts);
    match policy {
        ClientIp::Peer => peer,
        ClientIp::TrustedHops(0) => peer,
        ClientIp::TrustedHops(hops) => {
            // Each of the nearest `hops` proxies appended the address of
            // whoever connected to it: the client is the last of those.
            let nodes = forwarded_nodes(&parts.headers, (*hops).min(limits.forwarded_hops));
            nodes
                .get(hops - 1)
                .or(nodes.last())
                .copied()
                .flatten()
                .or(peer)
        }
        ClientIp::TrustedNetworks(nets) => {
            let peer = peer?;
            let trusted = |ip: IpAddr| nets.iter().any(|n| n.contains(ip));
            if !trusted(peer) {
                return Some(peer);
            }
            // Walk out from the nearest proxy while addresses are trusted.
            let mut client = peer;
            for node in forwarded_nodes(&parts.headers, limits.forwarded_hops) {
                match node {
                    Some(ip) if trusted(ip) => client = ip,
                    Some(ip) => return Some(ip),
                    None => break,
                }
            }
            Some(client)
        }
    }
}

/// Walks the chain. The LB token is taken where the cookie source stands;
/// the first hash key present ends the walk (and also serves as the
/// fallback when the token turns out invalid). A route does not end it:
/// the route may name no backend, and then the next hash key in the chain
/// places the request.
pub(crate) fn find<'a>(
    parts: &'a Parts,
    chain: &[Affinity],
    cookie_names: &[String],
    token_header: Option<&HeaderName>,
    ip_policy: &ClientIp,
    limits: &Limits,
    opens: &dyn Fn(&str) -> bool,
) -> Found<'a> {
    let mut found = Found::default();
    for source in chain {
        match source {
            Affinity::Cookie => {
                found.reads_token = true;
                if found.token.is_none() {
                    let from_header = token_header
                        .and_then(|h| parts.headers.get(h))
                        .and_then(|v| v.to_str().ok());
                    let (token, source) = match from_header {
                        Some(token) => (Some(token), KeySource::TokenHeader),
                        None => (
                            lb_cookie(&parts.headers, cookie_names, limits, opens),
                            KeySource::Cookie,
                        ),
                    };
                    if token.is_some() {
                        found.token = token;
                        found.sources.token = Some(source);
                    }
                }
                continue;
            }
            Affinity::Header(name) => {
                if let Some(v) = parts.headers.get(name).filter(|v| !v.is_empty()) {
                    found.hash = Some(HashKey::Borrowed(v.as_bytes()));
                }
            }
            Affinity::AppCookie(name) => {
                if let Some(v) = cookie(&parts.headers, name, limits).filter(|v| !v.is_empty()) {
                    found.hash = Some(HashKey::Borrowed(v.as_bytes()));
                }
            }
            Affinity::Route(name) => {
                if found.route.is_none() {
                    found.route = cookie(&parts.headers, name, limits)
                        .and_then(route_suffix)
                        .or_else(|| path_param(parts.uri.path(), name).and_then(route_suffix));
                }
                continue;
            }
            Affinity::Query(name) => {
                if let Some(v) = query(parts, name) {
                    found.hash = Some(HashKey::Borrowed(v.as_bytes()));
                }
            }
            Affinity::ClientIp => {
                if let Some(ip) = client_ip(parts, ip_policy, limits) {
                    found.hash = Some(HashKey::Ip(ip_key(ip)));
                }
            }
        }
        if found.hash.is_some() {
            found.sources.key = Some(match source {
                Affinity::Header(_) => KeySource::Header,
                Affinity::AppCookie(_) => KeySource::AppCookie,
                Affinity::Query(_) => KeySource::Query,
                _ => KeySource::ClientIp,
            });
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    #[test]
    fn a_query_key_is_the_first_non_empty_value() {
        for (uri, key) in [
            ("/?sid=abc", Some("abc")),
            ("/?a=1&sid=&sid=abc", Some("abc")),
            ("/?sid=a&sid=b", Some("a")),
            ("/?sid&sid=", None),
            ("/?sids=x", None),
            ("/", None),
        ] {
            let parts = parts(Request::get(uri).body(()).unwrap());
            assert_eq!(query(&parts, "sid"), key, "{uri}");
        }
    }

    #[test]
    fn networks_parse_and_match() {
        let net: IpNetwork = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let v6: IpNetwork = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNetwork>().is_err());
        assert!("nonsense".parse::<IpNetwork>().is_err());
        let all: IpNetwork = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn forwarded_nodes_parse() {
        for (text, ip) in [
            ("1.2.3.4", "1.2.3.4"),
            (" 1.2.3.4:80", "1.2.3.4"),
            ("\"[2001:db8::1]:443\"", "2001:db8::1"),
            ("2001:db8::2", "2001:db8::2"),
        ] {
            assert_eq!(parse_node(text), Some(ip.parse().unwrap()), "{text}");
        }
        assert_eq!(parse_node("unknown"), None);
        assert_eq!(parse_node("_hidden"), None);
    }

    #[test]
    fn trusted_hops_pick_the_entry_the_nearest_proxies_appended() {
        let mut req = Request::get("/")
            .header("x-forwarded-for", "6.6.6.6, 1.1.1.1")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(SocketAddr::from(([10, 0, 0, 2], 4000)));
        let p = parts(req);
        let limits = Limits::default();
        assert_eq!(
            client_ip(&p, &ClientIp::Peer, &limits),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(
            client_ip(&p, &ClientIp::TrustedHops(1), &limits),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            client_ip(&p, &ClientIp::TrustedHops(2), &limits),
            Some("1.1.1.1".parse().unwrap())
        );
        assert_eq!(
            client_ip(&p, &ClientIp::TrustedHops(9), &limits),
            Some("6.6.6.6".parse().unwrap())
        );
        let nets = ClientIp::TrustedNetworks(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            client_ip(&p, &nets, &limits),
            Some("1.1.1.1".parse().unwrap())
        );
    }

    /// Counts warnings.
    struct Warnings(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl tracing::Subscriber for Warnings {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            if *event.metadata().level() == tracing::Level::WARN {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// Client-IP affinity without the peer's address says so, once,
    /// instead of silently placing every request by weight.
    #[test]
    fn client_ip_affinity_without_a_peer_address_warns_once() {
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let subscriber = Warnings(std::sync::Arc::clone(&count));
        tracing::subscriber::with_default(subscriber, || {
            // A forwarded address that places the request: nothing to say.
            let forwarded = Request::get("/")
                .header("x-forwarded-for", "203.0.113.9")
                .body(())
                .unwrap();
            let hops = ClientIp::TrustedHops(1);
            assert!(client_ip(&parts(forwarded), &hops, &Limits::default()).is_some());
            assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 0);
            for _ in 0..3 {
                let p = parts(Request::get("/").body(()).unwrap());
                assert_eq!(client_ip(&p, &ClientIp::Peer, &Limits::default()), None);
            }
        });
        assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn forwarded_header_is_read_when_there_is_no_x_forwarded_for() {
        let mut req = Request::get("/")
            .header(
                "forwarded",
                "for=192.0.2.60;proto=http, for=\"[2001:db8::7]:80\"",
            )
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(SocketAddr::from(([10, 0, 0, 2], 4000)));
        let p = parts(req);
        let limits = Limits::default();
        assert_eq!(
            client_ip(&p, &ClientIp::TrustedHops(1), &limits),
            Some("2001:db8::7".parse().unwrap())
        );
        assert_eq!(
            client_ip(&p, &ClientIp::TrustedHops(2), &limits),
            Some("192.0.2.60".parse().unwrap())
        );
    }

    #[test]
    fn garbage_entries_keep_their_place_and_long_chains_are_cut() {
        let mut req = Request::get("/")
            .header("x-forwarded-for", "1.1.1.1, not-an-ip, 10.0.0.1")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(SocketAddr::from(([10, 0, 0, 2], 4000)));
        let p = parts(req);
        let limits = Limits::default();
        // Two hops trusted: the second entry from the right is garbage, so
        // no client address is known beyond the trusted proxies.
        assert_eq!(
            client_ip(&p, &ClientIp::TrustedHops(2), &limits),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(
            client_ip(&p, &ClientIp::TrustedHops(1), &limits),
            Some("10.0.0.1".parse().unwrap())
        );

        // 1,000 trusted hops: only the nearest `forwarded_hops` are read.
        let chain: Vec<String> = (0..1000)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect();
        let mut req = Request::get("/")
            .header("x-forwarded-for", chain.join(", "))
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(SocketAddr::from(([10, 0, 0, 2], 4000)));
        let nets = ClientIp::TrustedNetworks(vec!["10.0.0.0/8".parse().unwrap()]);
        let limits = Limits {
            forwarded_hops: 64,
            ..Limits::default()
        };
        assert_eq!(
            client_ip(&parts(req), &nets, &limits),
            Some(chain[1000 - 64].parse().unwrap())
        );
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_the_headers_say() {
        let mut req = Request::get("/")
            .header("x-forwarded-for", "1.1.1.1")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(SocketAddr::from(([203, 0, 113, 9], 4000)));
        let nets = ClientIp::TrustedNetworks(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            client_ip(&parts(req), &nets, &Limits::default()),
            Some("203.0.113.9".parse().unwrap())
        );
    }

    #[test]
    fn path_parameters_and_route_suffixes() {
        assert_eq!(
            path_param("/app;jsessionid=ABC.node2/x", "jsessionid"),
            Some("ABC.node2")
        );
        assert_eq!(
            path_param("/app;JSESSIONID=ABC.node2", "jsessionid"),
            Some("ABC.node2")
        );
        assert_eq!(path_param("/app", "jsessionid"), None);
        assert_eq!(route_suffix("ABC.DEF.node2"), Some("node2"));
        assert_eq!(route_suffix("ABC"), None);
        assert_eq!(route_suffix("ABC."), None);
    }

    #[test]
    fn cookies_across_headers_within_limits() {
        let req = Request::get("/")
            .header("cookie", "a=1; b=\"2\"")
            .header("cookie", "sticky=tok")
            .body(())
            .unwrap();
        let p = parts(req);
        let all: Vec<_> = cookies(&p.headers, &Limits::default()).collect();
        assert_eq!(
            all,
            [("a", "1"), ("b", "2"), ("sticky", "tok")].map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        );
        let tight = Limits {
            cookies: 2,
            ..Limits::default()
        };
        assert_eq!(cookie(&p.headers, "sticky", &tight), None);
    }

    #[test]
    fn pairs_are_the_pieces_split_gives() {
        for header in [
            "",
            ";",
            ";;",
            "a",
            "a;",
            ";a",
            "a;;b",
            " a=1 ; b=2;c",
            "x=1;",
        ] {
            let bytes = header.as_bytes();
            let expected: Vec<&[u8]> = bytes.split(|&b| b == b';').collect();
            assert_eq!(pairs(bytes).collect::<Vec<_>>(), expected, "{header:?}");
        }
    }

    #[test]
    fn a_named_value_that_is_not_utf8_is_passed_over() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            http::HeaderValue::from_bytes(b" sticky = \xff\xfe ; a=\"\xe9\"; sticky=\"tok\" ")
                .unwrap(),
        );
        assert_eq!(cookie(&headers, "sticky", &Limits::default()), Some("tok"));
        assert_eq!(cookie(&headers, "a", &Limits::default()), None);
        let all: Vec<_> = cookies(&headers, &Limits::default()).collect();
        assert_eq!(
            all,
            [
                (&b"sticky"[..], &b"\xff\xfe"[..]),
                (b"a", b"\xe9"),
                (b"sticky", b"tok")
            ]
        );
    }
}
