// What each fuzz target does with one input, shared with the regression
// test that replays saved inputs in the normal suite
// (tests/fuzz_regressions.rs). Each function must never panic.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Response};
use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
use sticky_core::{BackendSpec, Keys, Membership, Pool, PoolConfig};
use tower::{service_fn, ServiceExt};
use tower_sticky::{Affinity, Backends, ClientIp, Limits, Sticky, StickyLayer};

type Svc = tower::util::BoxCloneSyncService<Request<()>, Response<()>, Infallible>;

fn sticky(layer: StickyLayer) -> Sticky<Svc> {
    let backend = || {
        Svc::new(service_fn(|_r: Request<()>| async {
            Ok::<_, Infallible>(Response::new(()))
        }))
    };
    let keys = KeyRing::new(["fuzzing secret, sixteen bytes+"]).unwrap();
    let config = PoolConfig::new(TokenCodec::new(keys, TokenConfig::new("sticky")));
    let backends = Backends::new(
        config,
        [
            (BackendSpec::new("b1").route("node1"), backend()),
            (BackendSpec::new("b2").route("node2"), backend()),
        ],
    )
    .unwrap();
    tower::Layer::layer(&layer, backends)
}

/// Runs one request; the backends answer at once, so it must be ready.
fn run(service: &Sticky<Svc>, request: Request<()>) {
    let future = service.clone().oneshot(request);
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(result) => {
            result.expect("immediate backends never fail");
        }
        Poll::Pending => panic!("an immediate backend left the request pending"),
    }
}

/// Splits fuzz input into `n` parts at 0xFF bytes.
fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |&b| b == 0xff).collect();
    out.resize(n, &[]);
    out
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let keys = KeyRing::new([
            "fuzzing secret, sixteen bytes+",
            "an older fuzzing secret.....",
        ])
        .unwrap();
        let tokens = TokenCodec::new(
            keys,
            TokenConfig::new("sticky")
                .max_lifetime(Duration::from_secs(3600))
                .idle_timeout(Duration::from_secs(600)),
        );
        let membership = Membership::new()
            .with(BackendSpec::new("b1"))
            .with(BackendSpec::new("b2").weight(3))
            .with(BackendSpec::new("b3").group("canary"));
        Pool::new(PoolConfig::new(tokens), membership).unwrap()
    })
}

/// Token decoding: any text, as the LB cookie's value, opens to a typed
/// error or a token, and a decision is made either way.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = Duration::from_secs(1_700_000_000);
    let pool = pool();
    let opened = pool.config().tokens.open(text, now);
    let decision = pool
        .load()
        .decide(&Keys::new().issue_token().token(text), now);
    // Only a token this pool could have issued is ever a hit.
    if opened.is_err() {
        assert!(!decision.outcome.is_hit());
    }
}

/// Key extraction from any request: Cookie headers (several), path
/// parameters, the query, a hashed header and the token header, through
/// the whole chain.
pub fn request_keys(data: &[u8]) {
    static SERVICE: OnceLock<Sticky<Svc>> = OnceLock::new();
    let service = SERVICE.get_or_init(|| {
        sticky(
            StickyLayer::new()
                .affinity([
                    Affinity::Cookie,
                    Affinity::Route("JSESSIONID".into()),
                    Affinity::AppCookie("app".into()),
                    Affinity::Header(HeaderName::from_static("x-user")),
                    Affinity::Query("sid".into()),
                ])
                .token_header(HeaderName::from_static("x-sticky"))
                .strip_cookie(true),
        )
    });
    let parts = parts(data, 5);
    let Ok(uri) = http::Uri::try_from(parts[0]) else {
        return;
    };
    let mut request = Request::get(uri).body(()).unwrap();
    let headers = request.headers_mut();
    for cookie in parts[1].split(|&b| b == b'\n').chain([parts[2]]) {
        if let Ok(value) = HeaderValue::from_bytes(cookie) {
            headers.append(http::header::COOKIE, value);
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(parts[3]) {
        headers.insert("x-user", value);
    }
    if let Ok(value) = HeaderValue::from_bytes(parts[4]) {
        headers.insert("x-sticky", value);
    }
    run(service, request);
}

/// Client-IP extraction: X-Forwarded-For and Forwarded, under both trust
/// policies, from any header bytes.
pub fn forwarded(data: &[u8]) {
    static SERVICES: OnceLock<[Sticky<Svc>; 2]> = OnceLock::new();
    let services = SERVICES.get_or_init(|| {
        let layer = |policy| {
            StickyLayer::new()
                .affinity([Affinity::ClientIp])
                .client_ip(policy)
                .limits(Limits {
                    forwarded_hops: 16,
                    ..Limits::default()
                })
        };
        [
            sticky(layer(ClientIp::TrustedHops(3))),
            sticky(layer(ClientIp::TrustedNetworks(vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ]))),
        ]
    });
    let parts = parts(data, 3);
    for service in services {
        let mut request = Request::get("/").body(()).unwrap();
        for (name, part) in [("x-forwarded-for", parts[0]), ("forwarded", parts[1])] {
            for line in part.split(|&b| b == b'\n') {
                if let Ok(value) = HeaderValue::from_bytes(line) {
                    request.headers_mut().append(name, value);
                }
            }
        }
        let peer = if parts[2].first().is_some_and(|b| b % 2 == 0) {
            SocketAddr::from(([10, 0, 0, 1], 1000))
        } else {
            SocketAddr::from(([203, 0, 113, 5], 1000))
        };
        request.extensions_mut().insert(peer);
        run(service, request);
    }
}
