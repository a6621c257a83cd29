//! Hostile requests cost bounded work and get normal answers; secrets never
//! show in Debug output.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderName, Request, Response};
use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
use sticky_core::{BackendSpec, Outcome, PoolConfig};
use tower::{service_fn, ServiceExt};
use tower_sticky::{Affinity, Backends, ClientIp, Limits, ResponseBody, Sticky, StickyLayer};

const SECRET: &str = "hostile-input tests: 0123456789abcdef";

type Svc = tower::util::BoxCloneSyncService<Request<()>, Response<String>, Infallible>;

fn backends() -> Backends<Svc> {
    let backend = |name: &'static str| {
        Svc::new(service_fn(move |_r: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(name.to_string()))
        }))
    };
    let config = PoolConfig::new(TokenCodec::new(
        KeyRing::new([SECRET]).unwrap(),
        TokenConfig::new("sticky"),
    ));
    Backends::new(
        config,
        ["b1", "b2", "b3"].map(|n| (BackendSpec::new(n), backend(n))),
    )
    .unwrap()
}

async fn call(service: &Sticky<Svc>, request: Request<()>) -> Response<String> {
    service
        .clone()
        .oneshot(request)
        .await
        .unwrap()
        .map(ResponseBody::into_inner)
}

async fn a_session(service: &Sticky<Svc>) -> (String, String) {
    let r = call(service, Request::new(())).await;
    let cookie = r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    (cookie, r.into_body())
}

#[tokio::test]
async fn a_huge_cookie_header_is_read_only_up_to_the_byte_limit() {
    let service = Sticky::new(backends());
    let (cookie, home) = a_session(&service).await;
    // 64 KiB of other cookies before ours: past the 16 KiB default budget,
    // so ours is never reached and the request is a new session.
    let filler = "x=".to_owned() + &"a".repeat(64 * 1024);
    let request = Request::get("/")
        .header(COOKIE, format!("{filler}; {cookie}"))
        .body(())
        .unwrap();
    let r = call(&service, request).await;
    assert!(r.status().is_success());
    assert_eq!(r.extensions().get::<Outcome>(), Some(&Outcome::New));

    // Within the budget the same cookie is found.
    let request = Request::get("/")
        .header(COOKIE, format!("x={}; {cookie}", "a".repeat(1024)))
        .body(())
        .unwrap();
    assert_eq!(call(&service, request).await.into_body(), home);
}

#[tokio::test]
async fn a_thousand_cookies_are_read_only_up_to_the_count_limit() {
    let service = Sticky::new(backends());
    let (cookie, home) = a_session(&service).await;
    let many: Vec<String> = (0..1000).map(|i| format!("c{i}=v")).collect();
    let request = Request::get("/")
        .header(COOKIE, format!("{}; {cookie}", many.join("; ")))
        .body(())
        .unwrap();
    let r = call(&service, request).await;
    assert!(r.status().is_success());
    assert_eq!(
        r.extensions().get::<Outcome>(),
        Some(&Outcome::New),
        "cookie #1001 is past the limit of 200"
    );

    let request = Request::get("/")
        .header(COOKIE, format!("{}; {cookie}", many[..150].join("; ")))
        .body(())
        .unwrap();
    assert_eq!(
        call(&service, request).await.into_body(),
        home,
        "cookie #151 is within it"
    );
}

#[tokio::test]
async fn a_hundred_cookie_headers_are_read_within_the_same_limits() {
    let service = Sticky::new(backends());
    let (cookie, home) = a_session(&service).await;
    let mut builder = Request::get("/");
    for i in 0..99 {
        builder = builder.header(COOKIE, format!("h{i}=v"));
    }
    let r = call(&service, builder.header(COOKIE, &cookie).body(()).unwrap()).await;
    assert_eq!(
        r.into_body(),
        home,
        "100 small headers are within both limits"
    );

    let mut builder = Request::get("/");
    for i in 0..99 {
        builder = builder.header(COOKIE, format!("h{i}={}", "v".repeat(200)));
    }
    let r = call(&service, builder.header(COOKIE, &cookie).body(()).unwrap()).await;
    assert!(r.status().is_success());
    assert_eq!(
        r.extensions().get::<Outcome>(),
        Some(&Outcome::New),
        "20 KB of headers before it"
    );
}

#[tokio::test]
async fn a_thousand_forwarding_hops_are_read_only_up_to_the_hop_limit() {
    let layer = StickyLayer::new()
        .affinity([Affinity::ClientIp])
        .client_ip(ClientIp::TrustedNetworks(vec!["10.0.0.0/8"
            .parse()
            .unwrap()]))
        .limits(Limits {
            forwarded_hops: 8,
            ..Limits::default()
        });
    let service = layer_service(layer);
    let hops: Vec<String> = (0..1000)
        .map(|i| format!("10.9.{}.{}", i / 256, i % 256))
        .collect();
    let request = |chain: &str| {
        let mut r = Request::get("/")
            .header("x-forwarded-for", chain)
            .body(())
            .unwrap();
        r.extensions_mut()
            .insert(SocketAddr::from(([10, 0, 0, 1], 1000)));
        r
    };
    let r = call(&service, request(&hops.join(", "))).await;
    assert!(r.status().is_success());
    // Same answer whatever lies beyond the 8 nearest hops.
    let far = format!("203.0.113.7, {}", hops.join(", "));
    let again = call(&service, request(&far)).await;
    assert_eq!(again.into_body(), r.into_body());
}

fn layer_service(layer: StickyLayer) -> Sticky<Svc> {
    tower::Layer::layer(&layer, backends())
}

#[tokio::test]
async fn garbage_in_every_source_is_treated_as_no_key() {
    let layer = StickyLayer::new().affinity([
        Affinity::Cookie,
        Affinity::Header(HeaderName::from_static("x-user")),
        Affinity::Route("JSESSIONID".into()),
        Affinity::Query("sid".into()),
        Affinity::ClientIp,
    ]);
    let service = layer_service(layer);
    let nasty = [
        "sticky=",
        "sticky",
        "=",
        ";;;;",
        "sticky=\"",
        "sticky=\"\"",
        "JSESSIONID=.",
        "JSESSIONID=...",
        "sticky=%00%ff",
        "sticky=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ];
    for value in nasty {
        let request = Request::get("/a;jsessionid=;x?sid&&=&sid=")
            .header(COOKIE, value)
            .header("x-forwarded-for", ",,,[::1]:99999, 999.1.1.1")
            .body(())
            .unwrap();
        let r = call(&service, request).await;
        assert!(r.status().is_success(), "{value}");
    }
}

#[test]
fn secrets_never_show_in_debug_output() {
    let backends = backends();
    let service = Sticky::new(backends.clone());
    let config = backends.config().clone();
    for debug in [
        format!("{:?}", config),
        format!("{:?}", config.tokens),
        format!("{:?}", config.tokens.keys()),
        format!("{:?}", backends),
        format!("{:?}", service),
        format!("{:?}", backends.snapshot()),
        format!("{:#?}", service),
    ] {
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
        // Nor any 8-byte run of the secret's bytes written as numbers.
        let bytes: Vec<String> = SECRET.bytes().take(8).map(|b| b.to_string()).collect();
        assert!(!debug.contains(&bytes.join(", ")), "{debug}");
    }
}
