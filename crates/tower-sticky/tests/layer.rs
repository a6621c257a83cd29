//! The layer's behaviour with real services: keys, cookies, failover,
//! readiness, retries, runtime changes and concurrency.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
use sticky_core::{
    BackendSpec, BackendState, FailoverPolicy, HealthPolicy, Outcome, PoolConfig, Reason,
};
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};
use tower_sticky::{
    Affinity, Backends, ClientIp, CookieAttributes, Error, Placement, ResponseBody, Sticky,
    StickyLayer, Unsent,
};

const SECRET: &str = "layer tests secret, 32 bytes long";

type Svc = tower::util::BoxCloneSyncService<Request<String>, Response<String>, BoxError>;

/// A backend that answers with its name and echoes the Cookie headers it got.
fn named(name: &'static str) -> Svc {
    Svc::new(service_fn(move |req: Request<String>| async move {
        let cookies: Vec<&[u8]> = req
            .headers()
            .get_all(COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let seen = HeaderValue::from_bytes(&cookies.join(&b" | "[..])).unwrap();
        let mut response = Response::new(name.to_string());
        response.headers_mut().insert("x-seen-cookies", seen);
        Ok::<_, BoxError>(response)
    }))
}

fn config_with(secrets: &[&str]) -> PoolConfig {
    PoolConfig::new(TokenCodec::new(
        KeyRing::new(secrets).unwrap(),
        TokenConfig::new("sticky"),
    ))
}

fn backends_of(config: PoolConfig, names: &[&'static str]) -> Backends<Svc> {
    Backends::new(
        config,
        names.iter().map(|&n| (BackendSpec::new(n), named(n))),
    )
    .unwrap()
}

/// Passive health that rests a backend for an hour (longer than any test)
/// after `failures` in a row.
fn resting_after(failures: u32) -> HealthPolicy {
    HealthPolicy {
        failure_threshold: failures,
        cooldown: std::time::Duration::from_secs(3600),
    }
}

/// `failing` (named `name`) and a backend `ok` that always answers, under
/// `health`.
fn beside_a_healthy_one(name: &'static str, failing: Svc, health: HealthPolicy) -> Backends<Svc> {
    Backends::new(
        config_with(&[SECRET]).health(health),
        [
            (BackendSpec::new(name), failing),
            (BackendSpec::new("ok"), named("ok")),
        ],
    )
    .unwrap()
}

fn three() -> Backends<Svc> {
    backends_of(config_with(&[SECRET]), &["b1", "b2", "b3"])
}

/// `name=value` of the sticky Set-Cookie, if any.
fn sticky_cookie(response: &Response<String>) -> Option<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("sticky="))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

// The helpers own what they await on (a clone of the service, owned
// strings), so their futures are `'static`.
fn send(service: &Sticky<Svc>, request: Request<String>) -> impl Future<Output = Response<String>> {
    let service = service.clone();
    async move {
        service
            .oneshot(request)
            .await
            .unwrap()
            .map(ResponseBody::into_inner)
    }
}

fn get(service: &Sticky<Svc>, cookie: Option<&str>) -> impl Future<Output = Response<String>> {
    get_at(service, "/", cookie)
}

fn get_at(
    service: &Sticky<Svc>,
    path: &str,
    cookie: Option<&str>,
) -> impl Future<Output = Response<String>> {
    let mut builder = Request::get(path);
    if let Some(c) = cookie {
        builder = builder.header(COOKIE, c);
    }
    send(service, builder.body(String::new()).unwrap())
}

/// A new session: its cookie pair and backend.
fn session(service: &Sticky<Svc>) -> impl Future<Output = (String, String)> {
    let response = get(service, None);
    async move {
        let r = response.await;
        (
            sticky_cookie(&r).expect("a new session gets a cookie"),
            r.into_body(),
        )
    }
}

#[tokio::test]
async fn cookie_sessions_stick_and_are_not_re_sent() {
    let service = Sticky::new(three());
    for _ in 0..30 {
        let (cookie, home) = session(&service).await;
        for _ in 0..5 {
            let r = get(&service, Some(&cookie)).await;
            assert_eq!(r.extensions().get::<Outcome>(), Some(&Outcome::Hit));
            assert!(r.headers().get(SET_COOKIE).is_none());
            assert_eq!(r.into_body(), home);
        }
    }
}

#[tokio::test]
async fn cookie_attributes_default_to_safe_values_and_are_configurable() {
    let default = Sticky::new(three());
    let r = get(&default, None).await;
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Lax"), "{set}");
    assert!(set.contains("Path=/"), "{set}");
    assert!(!set.contains("Secure"), "{set}");
    assert!(
        !set.contains("Max-Age"),
        "session cookie without lifetimes: {set}"
    );
    assert_eq!(r.headers()[CACHE_CONTROL], "private");

    let tokens = TokenCodec::new(
        KeyRing::new([SECRET]).unwrap(),
        TokenConfig::new("sticky").idle_timeout(std::time::Duration::from_secs(900)),
    );
    let backends = backends_of(PoolConfig::new(tokens), &["b1", "b2"]);
    let layer = StickyLayer::new().cookie_attributes(CookieAttributes {
        path: "/app".into(),
        domain: Some("example.com".into()),
        secure: true,
        partitioned: true,
        cors_twin: true,
        ..CookieAttributes::default()
    });
    let service = layer_service(layer, backends);
    let r = get_at(&service, "/app", None).await;
    let all: Vec<String> = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(all.len(), 2, "the cookie and its CORS twin: {all:?}");
    let main = &all[0];
    for attr in [
        "Path=/app",
        "Domain=example.com",
        "Secure",
        "Partitioned",
        "Max-Age=900",
        "HttpOnly",
    ] {
        assert!(main.contains(attr), "{attr} missing from {main}");
    }
    assert!(all[1].starts_with("stickyCORS="), "{}", all[1]);
    assert!(
        all[1].contains("SameSite=None") && all[1].contains("Secure"),
        "{}",
        all[1]
    );

    // A cross-site request carries only the twin: it still sticks.
    let home = r.into_body();
    let twin = all[1].split(';').next().unwrap().to_owned();
    for _ in 0..5 {
        assert_eq!(
            get_at(&service, "/app/x", Some(&twin)).await.into_body(),
            home
        );
    }

    // Browsers drop a `SameSite=None` cookie that is not `Secure`.
    let layer = StickyLayer::new().cookie_attributes(CookieAttributes {
        same_site: tower_sticky::SameSite::None,
        ..CookieAttributes::default()
    });
    let r = get(&layer_service(layer, three()), None).await;
    let set = r.headers()[SET_COOKIE].to_str().unwrap();
    assert!(
        set.contains("SameSite=None") && set.contains("Secure"),
        "{set}"
    );
}

/// A cookie with a `Path` is set only in answers to requests under it: one
/// set elsewhere would never come back, and would replace the session's.
#[tokio::test]
async fn a_cookie_path_keeps_requests_elsewhere_from_replacing_the_session() {
    let layer = StickyLayer::new().cookie_attributes(CookieAttributes {
        path: "/shop".into(),
        ..CookieAttributes::default()
    });
    let service = layer_service(layer, three());
    let first = get_at(&service, "/shop", None).await;
    let cookie = sticky_cookie(&first).expect("a session under /shop");
    let home = first.into_body();
    for path in ["/", "/other", "/shopping", "/sho"] {
        let r = get_at(&service, path, None).await;
        assert_eq!(
            r.extensions().get::<Outcome>(),
            Some(&Outcome::New),
            "{path}"
        );
        assert_eq!(sticky_cookie(&r), None, "{path}: no cookie outside /shop");
    }
    for path in ["/shop", "/shop/", "/shop/cart?item=7"] {
        let r = get_at(&service, path, Some(&cookie)).await;
        assert_eq!(
            r.extensions().get::<Outcome>(),
            Some(&Outcome::Hit),
            "{path}"
        );
        assert_eq!(r.into_body(), home, "{path}");
    }
    // A token header still goes out there, kept from shared caches as a
    // cookie would be.
    let layer = StickyLayer::new()
        .token_header(HeaderName::from_static("x-sticky"))
        .cookie_attributes(CookieAttributes {
            path: "/shop".into(),
            ..CookieAttributes::default()
        });
    let service = layer_service(layer, three());
    let r = get_at(&service, "/other", None).await;
    assert!(r.headers().contains_key("x-sticky"), "{:?}", r.headers());
    assert_eq!(sticky_cookie(&r), None);
    assert_eq!(r.headers()[CACHE_CONTROL], "private");
    // A path not starting with / is written as /, which covers every path.
    let layer = StickyLayer::new().cookie_attributes(CookieAttributes {
        path: "shop".into(),
        ..CookieAttributes::default()
    });
    let r = get_at(&layer_service(layer, three()), "/other", None).await;
    let set = r.headers()[SET_COOKIE].to_str().unwrap();
    assert!(set.contains("Path=/;") || set.ends_with("Path=/"), "{set}");
    // A path that ends with / covers only what is below it.
    let layer = StickyLayer::new().cookie_attributes(CookieAttributes {
        path: "/app/".into(),
        ..CookieAttributes::default()
    });
    let service = layer_service(layer, three());
    assert!(sticky_cookie(&get_at(&service, "/app/x", None).await).is_some());
    assert!(sticky_cookie(&get_at(&service, "/app", None).await).is_none());
}

/// An application that expires the LB cookie has the last word, even in a
/// response where the layer would have refreshed it.
#[tokio::test]
async fn an_application_that_expires_the_cookie_is_not_overridden() {
    const OLD: &str = "the secret before the rotation...";
    let (cookie, _) = session(&Sticky::new(backends_of(
        config_with(&[OLD]),
        &["b1", "b2"],
    )))
    .await;
    let logout = Svc::new(service_fn(|_req: Request<String>| async {
        let mut r = Response::new("logged out".to_string());
        r.headers_mut()
            .append(SET_COOKIE, "sticky=; Path=/; Max-Age=0".parse().unwrap());
        Ok::<_, BoxError>(r)
    }));
    let rotated = Backends::new(
        config_with(&[SECRET, OLD]),
        ["b1", "b2"].map(|n| (BackendSpec::new(n), logout.clone())),
    )
    .unwrap();
    let r = get(&Sticky::new(rotated), Some(&cookie)).await;
    assert_eq!(
        r.extensions().get::<Outcome>(),
        Some(&Outcome::Refreshed),
        "a token of the old key is re-signed"
    );
    let all: Vec<&str> = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(all, ["sticky=; Path=/; Max-Age=0"]);
}

fn layer_service(layer: StickyLayer, backends: Backends<Svc>) -> Sticky<Svc> {
    ServiceBuilder::new().layer(layer).service(backends)
}

#[tokio::test]
async fn backend_cookies_and_cache_headers_are_respected() {
    let app = Svc::new(service_fn(|_req: Request<String>| async {
        let mut r = Response::new("app".to_string());
        r.headers_mut()
            .append(SET_COOKIE, "JSESSIONID=abc; Path=/".parse().unwrap());
        r.headers_mut().insert(
            CACHE_CONTROL,
            "public, max-age=60, s-maxage=600".parse().unwrap(),
        );
        Ok::<_, BoxError>(r)
    }));
    let backends = Backends::new(config_with(&[SECRET]), [(BackendSpec::new("app"), app)]).unwrap();
    let r = get(&Sticky::new(backends), None).await;
    let all: Vec<&str> = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(all.len(), 2, "appended, never merged: {all:?}");
    assert_eq!(
        all[0], "JSESSIONID=abc; Path=/",
        "the backend's own cookie is untouched"
    );
    assert_eq!(r.headers()[CACHE_CONTROL], "private, max-age=60");
}

/// A refreshed cookie lives no longer in the browser than its session
/// does on the server: the session's lifetime counts from its first token.
#[tokio::test]
async fn a_refreshed_cookie_expires_with_its_session() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let minutes = |m: u64| Duration::from_secs(60 * m);
    let config = TokenConfig::new("sticky")
        .max_lifetime(minutes(60))
        .idle_timeout(minutes(30));
    let keys = KeyRing::new([SECRET]).unwrap();
    let codec = TokenCodec::new(keys.clone(), config.clone());
    let service = Sticky::new(backends_of(
        PoolConfig::new(TokenCodec::new(keys.clone(), config)),
        &["b1", "b2", "b3"],
    ));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    // Started 50 minutes ago, last seen 20 minutes ago: due for a refresh,
    // and 10 minutes from the end of its lifetime.
    let token = codec.seal(
        keys.backend_tag(0, "b2"),
        keys.group_tag(0, ""),
        now - minutes(50),
        now - minutes(20),
    );
    let r = get(&service, Some(&format!("sticky={token}"))).await;
    assert_eq!(r.extensions().get::<Outcome>(), Some(&Outcome::Refreshed));
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let max_age: u64 = set
        .split("; ")
        .find_map(|attribute| attribute.strip_prefix("Max-Age="))
        .unwrap_or_else(|| panic!("no Max-Age in {set}"))
        .parse()
        .unwrap();
    assert!((595..=600).contains(&max_age), "{set}");
    assert_eq!(r.into_body(), "b2");
}

#[tokio::test]
async fn every_cookie_header_is_read_and_the_lb_cookie_can_be_stripped() {
    let service = layer_service(StickyLayer::new().strip_cookie(true), three());
    let (cookie, home) = session(&service).await;
    // HTTP/2 clients send one Cookie header per cookie.
    let request = Request::get("/")
        .header(COOKIE, "theme=dark")
        .header(COOKIE, &cookie)
        .header(COOKIE, "lang=en;x=1")
        .body(String::new())
        .unwrap();
    let r = send(&service, request).await;
    // The headers without the LB cookie reach the backend as they were.
    assert_eq!(r.headers()["x-seen-cookies"], "theme=dark | lang=en;x=1");
    assert_eq!(r.into_body(), home);
}

#[tokio::test]
async fn a_cookie_outside_ascii_costs_only_itself() {
    let service = layer_service(StickyLayer::new().strip_cookie(true), three());
    let (cookie, home) = session(&service).await;
    // Browsers send every cookie in one header; an app's cookie with a
    // UTF-8 value sits next to the LB cookie.
    let header = format!("name=José; {cookie}; lang=en");
    let request = Request::get("/")
        .header(COOKIE, HeaderValue::from_bytes(header.as_bytes()).unwrap())
        .body(String::new())
        .unwrap();
    let r = send(&service, request).await;
    assert_eq!(r.extensions().get::<Outcome>(), Some(&Outcome::Hit));
    assert_eq!(sticky_cookie(&r), None);
    assert_eq!(
        r.headers()["x-seen-cookies"].as_bytes(),
        "name=José; lang=en".as_bytes()
    );
    assert_eq!(r.into_body(), home);
}

/// A stale copy of the LB cookie (left under another Path or Domain,
/// which the browser sends first) must not hide the live one.
#[tokio::test]
async fn the_first_copy_of_the_lb_cookie_that_checks_out_wins() {
    let service = Sticky::new(three());
    for _ in 0..10 {
        let (cookie, home) = session(&service).await;
        let header = format!("sticky=stale-from-another-path; theme=dark; {cookie}");
        let r = get(&service, Some(&header)).await;
        assert_eq!(r.extensions().get::<Outcome>(), Some(&Outcome::Hit));
        assert_eq!(sticky_cookie(&r), None);
        assert_eq!(r.into_body(), home);
    }
    // Only the first four differing copies are tried: a request cannot
    // have a signature checked for every cookie it sends.
    let (cookie, _) = session(&service).await;
    let header = format!("sticky=a; sticky=b; sticky=c; sticky=d; {cookie}");
    let r = get(&service, Some(&header)).await;
    assert_eq!(r.extensions().get::<Outcome>(), Some(&Outcome::Invalid));
    assert!(sticky_cookie(&r).is_some(), "the bad copy is replaced");
}

#[tokio::test]
async fn tampered_cookies_start_a_new_session() {
    let service = Sticky::new(three());
    let (cookie, _) = session(&service).await;
    let mut forged = cookie.into_bytes();
    let last = forged.len() - 5;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for bad in [
        forged.as_str(),
        "sticky=",
        "sticky=%%%",
        "sticky=AAAA",
        "sticky=\u{1F600}",
    ] {
        let r = get(&service, Some(bad)).await;
        assert_eq!(r.status(), StatusCode::OK);
        // A value outside ASCII is no token the layer wrote.
        let outcome = *r.extensions().get::<Outcome>().unwrap();
        assert!(
            matches!(outcome, Outcome::Invalid | Outcome::New),
            "{bad}: {outcome}"
        );
        assert!(sticky_cookie(&r).is_some(), "a fresh cookie for {bad}");
    }
}

#[tokio::test]
async fn rotated_keys_keep_sessions_and_re_sign_them() {
    let old = "the old secret of this fleet....";
    let before = Sticky::new(backends_of(config_with(&[old]), &["b1", "b2", "b3"]));
    let after = Sticky::new(backends_of(
        config_with(&[SECRET, old]),
        &["b1", "b2", "b3"],
    ));
    for _ in 0..10 {
        let (cookie, home) = session(&before).await;
        let r = get(&after, Some(&cookie)).await;
        assert_eq!(r.extensions().get::<Outcome>(), Some(&Outcome::Refreshed));
        let renewed = sticky_cookie(&r).expect("re-signed");
        assert_eq!(r.into_body(), home);
        assert_eq!(
            get(&after, Some(&renewed))
                .await
                .extensions()
                .get::<Outcome>(),
            Some(&Outcome::Hit)
        );
    }
}

#[tokio::test]
async fn keys_replaced_in_a_running_service_rotate_its_sessions() {
    let old = "the old secret of this fleet....";
    let backends = backends_of(config_with(&[old]), &["b1", "b2", "b3"]);
    let service = Sticky::new(backends.clone());
    let mut sessions = Vec::new();
    for _ in 0..12 {
        sessions.push(session(&service).await);
    }
    backends.drain("b2").unwrap();
    let outcome = |r: &Response<String>| r.extensions().get::<Outcome>().copied();

    // The new secret verifies, the old one still signs: nothing changes
    // for anyone.
    backends
        .set_keys(KeyRing::new([old, SECRET]).unwrap())
        .unwrap();
    for (cookie, home) in &sessions {
        let r = get(&service, Some(cookie)).await;
        assert_eq!(outcome(&r), Some(Outcome::Hit));
        assert_eq!(sticky_cookie(&r), None);
        assert_eq!(&r.into_body(), home);
    }
    // The new secret signs: each session is re-signed where it was, the
    // drained backend's too.
    backends
        .set_keys(KeyRing::new([SECRET, old]).unwrap())
        .unwrap();
    let mut renewed = Vec::new();
    for (cookie, home) in &sessions {
        let r = get(&service, Some(cookie)).await;
        assert_eq!(outcome(&r), Some(Outcome::Refreshed));
        renewed.push(sticky_cookie(&r).expect("re-signed"));
        assert_eq!(&r.into_body(), home);
    }
    // The old secret retired: its cookies count as none.
    backends.set_keys(KeyRing::new([SECRET]).unwrap()).unwrap();
    for ((cookie, home), renewed) in sessions.iter().zip(&renewed) {
        let r = get(&service, Some(renewed)).await;
        assert_eq!(
            (outcome(&r), r.into_body()),
            (Some(Outcome::Hit), home.clone())
        );
        let r = get(&service, Some(cookie)).await;
        assert_eq!(outcome(&r), Some(Outcome::Invalid));
        assert!(sticky_cookie(&r).is_some(), "a new session");
        assert_ne!(
            r.into_body(),
            "b2",
            "the drained backend takes no new session"
        );
    }
    assert_eq!(backends.status()[1].state, BackendState::Draining);
}

#[tokio::test]
async fn draining_keeps_sessions_and_removal_fails_over_with_a_new_cookie() {
    let backends = three();
    let service = Sticky::new(backends.clone());
    let mut sessions = Vec::new();
    for _ in 0..30 {
        sessions.push(session(&service).await);
    }
    backends.drain("b1").unwrap();
    for (cookie, home) in &sessions {
        assert_eq!(&get(&service, Some(cookie)).await.into_body(), home);
    }
    for _ in 0..20 {
        assert_ne!(session(&service).await.1, "b1");
    }
    backends.remove("b2").unwrap();
    for (cookie, home) in &sessions {
        let r = get(&service, Some(cookie)).await;
        if home == "b2" {
            let placement = r.extensions().get::<Placement>().unwrap();
            assert_eq!(placement.outcome, Outcome::Failover(Reason::Removed));
            assert_eq!(
                placement.source,
                tower_sticky::KeySource::None,
                "the weights placed the moved session"
            );
            let moved = sticky_cookie(&r).expect("a new cookie");
            let now_on = r.into_body();
            assert_eq!(now_on, "b3", "b1 drains, b2 is gone");
            assert_eq!(get(&service, Some(&moved)).await.into_body(), now_on);
        } else {
            assert_eq!(&r.into_body(), home);
        }
    }
}

/// A health checker's verdict moves a backend's sessions off it, keeps
/// new ones away whatever its requests do meanwhile, and, once it passes,
/// gives the backend back its own state: a drained one stays draining.
#[tokio::test]
async fn failing_health_checks_move_sessions_until_they_pass() {
    let backends = three();
    let service = Sticky::new(backends.clone());
    let mut on_b1 = None;
    while on_b1.is_none() {
        let (cookie, home) = session(&service).await;
        if home == "b1" {
            on_b1 = Some(cookie);
        }
    }
    let on_b1 = on_b1.unwrap();
    backends.set_checks_passing("b1", false).unwrap();
    backends.enable("b1").unwrap();
    let r = get(&service, Some(&on_b1)).await;
    assert_eq!(
        r.extensions().get::<Placement>().unwrap().outcome,
        Outcome::Failover(Reason::Unhealthy)
    );
    let moved = sticky_cookie(&r).expect("a new cookie");
    assert_ne!(r.into_body(), "b1");
    for _ in 0..30 {
        assert_ne!(session(&service).await.1, "b1");
    }
    let b1 = |backends: &Backends<Svc>| {
        backends
            .status()
            .into_iter()
            .find(|s| s.name.as_str() == "b1")
            .unwrap()
    };
    assert!(b1(&backends).failing_checks);
    assert_eq!(b1(&backends).state, BackendState::Unhealthy);

    backends.drain("b1").unwrap();
    backends.set_checks_passing("b1", true).unwrap();
    assert_eq!(b1(&backends).state, BackendState::Draining);
    assert!(!b1(&backends).failing_checks);
    backends.enable("b1").unwrap();
    let mut reached = false;
    for _ in 0..30 {
        reached |= session(&service).await.1 == "b1";
    }
    assert!(reached, "b1 takes new sessions again");
    assert_ne!(
        get(&service, Some(&moved)).await.into_body(),
        "b1",
        "moved sessions stay moved"
    );
    assert!(
        backends.set_checks_passing("b9", true).is_err(),
        "an unknown name"
    );
}

#[tokio::test]
async fn strict_mode_answers_503_for_sessions_of_a_removed_backend() {
    let backends = backends_of(
        config_with(&[SECRET]).failover(FailoverPolicy::Strict),
        &["b1", "b2"],
    );
    let service = Sticky::new(backends.clone());
    let (cookie, home) = session(&service).await;
    backends.remove(&home).unwrap();
    let request = Request::get("/")
        .header(COOKIE, &cookie)
        .body(String::new())
        .unwrap();
    let error = service.clone().oneshot(request).await.unwrap_err();
    assert!(matches!(error, Error::Rejected(Reason::Removed)), "{error}");
    let request = Request::get("/")
        .header(COOKIE, &cookie)
        .body(String::new())
        .unwrap();
    let r = service
        .errors_as_responses()
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// With a cookie chained before a header key, a cookie that does not
/// check out places nothing: the header key does, and `Placement` says so.
#[tokio::test]
async fn a_bad_cookie_falls_back_to_the_next_key_and_placement_names_it() {
    let service = header_service(vec![
        Affinity::Cookie,
        Affinity::Header(HeaderName::from_static("x-user")),
    ]);
    let request = |cookie: Option<&str>, user: &str| {
        let mut r = Request::get("/").header("x-user", user);
        if let Some(cookie) = cookie {
            r = r.header(COOKIE, cookie);
        }
        r.body(String::new()).unwrap()
    };
    for i in 0..20 {
        let user = format!("user-{i}");
        let keyed = send(&service, request(None, &user)).await;
        let placement = keyed.extensions().get::<Placement>().unwrap().clone();
        assert_eq!(placement.source, tower_sticky::KeySource::Header);
        let home = keyed.into_body();

        let r = send(&service, request(Some("sticky=forged-value"), &user)).await;
        let placement = r.extensions().get::<Placement>().unwrap().clone();
        assert_eq!(placement.outcome, Outcome::Invalid);
        assert_eq!(placement.source, tower_sticky::KeySource::Header, "{user}");
        assert_eq!(r.into_body(), home, "{user}: placed by its header key");
    }
    // A genuine cookie wins over a header key that lives elsewhere, and is
    // named as the source.
    let (cookie, home) = session(&service).await;
    let mut elsewhere = None;
    for i in 0..100 {
        let user = format!("other-{i}");
        if send(&service, request(None, &user)).await.into_body() != home {
            elsewhere = Some(user);
            break;
        }
    }
    let user = elsewhere.expect("some header key lives on another backend");
    let r = send(&service, request(Some(&cookie), &user)).await;
    let placement = r.extensions().get::<Placement>().unwrap().clone();
    assert_eq!(placement.source, tower_sticky::KeySource::Cookie);
    assert_eq!(r.into_body(), home);
}

fn header_service(chain: Vec<Affinity>) -> Sticky<Svc> {
    layer_service(
        StickyLayer::new().affinity(chain),
        backends_of(config_with(&[SECRET]), &["b1", "b2", "b3", "b4"]),
    )
}

async fn spread(
    service: &Sticky<Svc>,
    make: impl Fn(usize) -> Request<String>,
) -> std::collections::HashSet<String> {
    let mut seen = std::collections::HashSet::new();
    for i in 0..40 {
        let first = send(service, make(i)).await;
        assert!(
            first.headers().get(SET_COOKIE).is_none(),
            "keyed sources issue no cookie"
        );
        let home = first.into_body();
        for _ in 0..3 {
            assert_eq!(send(service, make(i)).await.into_body(), home, "key {i}");
        }
        seen.insert(home);
    }
    seen
}

#[tokio::test]
async fn every_keyed_source_sticks_and_spreads() {
    let header = header_service(vec![Affinity::Header(HeaderName::from_static("x-user"))]);
    let seen = spread(&header, |i| {
        Request::get("/")
            .header("x-user", format!("user-{i}"))
            .body(String::new())
            .unwrap()
    })
    .await;
    assert!(seen.len() >= 3, "{seen:?}");

    let app = header_service(vec![Affinity::AppCookie("JSESSIONID".into())]);
    let seen = spread(&app, |i| {
        Request::get("/")
            .header(COOKIE, format!("a=b; JSESSIONID=s{i}"))
            .body(String::new())
            .unwrap()
    })
    .await;
    assert!(seen.len() >= 3, "{seen:?}");

    let query = header_service(vec![Affinity::Query("session".into())]);
    let seen = spread(&query, |i| {
        Request::get(format!("/x?a=1&session=q{i}"))
            .body(String::new())
            .unwrap()
    })
    .await;
    assert!(seen.len() >= 3, "{seen:?}");

    let ip = header_service(vec![Affinity::ClientIp]);
    let seen = spread(&ip, |i| {
        let mut r = Request::get("/").body(String::new()).unwrap();
        r.extensions_mut()
            .insert(SocketAddr::from(([192, 0, 2, i as u8], 5000 + i as u16)));
        r
    })
    .await;
    assert!(seen.len() >= 3, "{seen:?}");
}

#[tokio::test]
async fn forwarded_headers_count_only_when_trusted() {
    let request = |client: &str| {
        let mut r = Request::get("/")
            .header("x-forwarded-for", client)
            .body(String::new())
            .unwrap();
        r.extensions_mut()
            .insert(SocketAddr::from(([10, 0, 0, 1], 4000)));
        r
    };
    let backends = backends_of(config_with(&[SECRET]), &["b1", "b2", "b3", "b4"]);
    let untrusted = layer_service(
        StickyLayer::new().affinity([Affinity::ClientIp]),
        backends.clone(),
    );
    let homes: std::collections::HashSet<String> = futures_collect(
        &untrusted,
        (0..20).map(|i| request(&format!("198.51.100.{i}"))),
    )
    .await;
    assert_eq!(
        homes.len(),
        1,
        "without trust, every request is the proxy's IP"
    );

    let trusted = layer_service(
        StickyLayer::new()
            .affinity([Affinity::ClientIp])
            .client_ip(ClientIp::TrustedHops(1)),
        backends,
    );
    let homes = futures_collect(
        &trusted,
        (0..20).map(|i| request(&format!("198.51.100.{i}"))),
    )
    .await;
    assert!(homes.len() >= 3, "{homes:?}");
}

async fn futures_collect(
    service: &Sticky<Svc>,
    requests: impl Iterator<Item = Request<String>>,
) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    for r in requests {
        out.insert(send(service, r).await.into_body());
    }
    out
}

#[tokio::test]
async fn route_suffixes_in_cookie_and_path_reach_their_backend() {
    let backends = Backends::new(
        config_with(&[SECRET]),
        [
            (
                BackendSpec::new("10.0.0.1:8080").route("node1"),
                named("one"),
            ),
            (
                BackendSpec::new("10.0.0.2:8080").route("node2"),
                named("two"),
            ),
        ],
    )
    .unwrap();
    let service = layer_service(
        StickyLayer::new().affinity([Affinity::Route("JSESSIONID".into())]),
        backends,
    );
    for _ in 0..5 {
        let r = send(
            &service,
            Request::get("/")
                .header(COOKIE, "JSESSIONID=ABC123.node2")
                .body(String::new())
                .unwrap(),
        )
        .await;
        assert_eq!(r.into_body(), "two");
        let r = send(
            &service,
            Request::get("/shop;jsessionid=XYZ.node1/cart")
                .body(String::new())
                .unwrap(),
        )
        .await;
        assert_eq!(
            r.extensions().get::<Placement>().unwrap().source,
            tower_sticky::KeySource::Route
        );
        assert_eq!(r.into_body(), "one");
    }
    let r = send(
        &service,
        Request::get("/")
            .header(COOKIE, "JSESSIONID=ABC.node9")
            .body(String::new())
            .unwrap(),
    )
    .await;
    assert_eq!(
        r.extensions().get::<Outcome>(),
        Some(&Outcome::Invalid),
        "unknown routes are never routed to"
    );
    assert_eq!(
        r.extensions().get::<Placement>().unwrap().source,
        tower_sticky::KeySource::None,
        "an unknown route placed nothing: the weights did"
    );
}

/// Sources are tried in the chain's order, the cookie too: a header
/// listed before it places the request even when a valid cookie comes
/// with it; listed after it, only when there is no valid cookie.
#[tokio::test]
async fn the_cookie_and_a_header_are_tried_in_the_chains_order() {
    let x_user = || Affinity::Header(HeaderName::from_static("x-user"));
    for cookie_first in [true, false] {
        let chain = if cookie_first {
            [Affinity::Cookie, x_user()]
        } else {
            [x_user(), Affinity::Cookie]
        };
        let service = layer_service(StickyLayer::new().affinity(chain), three());
        for i in 0..6 {
            let (cookie, home) = session(&service).await;
            let both = Request::get("/")
                .header("x-user", format!("u{i}"))
                .header(COOKIE, &cookie)
                .body(String::new())
                .unwrap();
            let r = send(&service, both).await;
            let placement = r.extensions().get::<Placement>().unwrap().clone();
            let expected = if cookie_first {
                tower_sticky::KeySource::Cookie
            } else {
                tower_sticky::KeySource::Header
            };
            assert_eq!(placement.source, expected, "cookie first: {cookie_first}");
            if cookie_first {
                assert_eq!(r.into_body(), home);
            }
        }
    }
}

/// A keyed session that fails over gets a token only where the chain
/// reads it back: with the cookie before the header, the token keeps the
/// session where it moved once its own backend is back; with the header
/// first, no token is sent (it would never be read) and the key takes the
/// session home.
#[tokio::test]
async fn a_keyed_session_that_fails_over_gets_a_token_only_if_it_is_read() {
    let x_user = || Affinity::Header(HeaderName::from_static("x-user"));
    let token = HeaderName::from_static("x-sticky-token");
    for cookie_first in [true, false] {
        let chain = if cookie_first {
            [Affinity::Cookie, x_user()]
        } else {
            [x_user(), Affinity::Cookie]
        };
        let backends = three();
        let layer = StickyLayer::new()
            .affinity(chain)
            .token_header(token.clone());
        let service = layer_service(layer, backends.clone());
        let request = |cookie: Option<&str>| {
            let mut r = Request::get("/").header("x-user", "u1");
            if let Some(cookie) = cookie {
                r = r.header(COOKIE, cookie);
            }
            r.body(String::new()).unwrap()
        };
        let home = send(&service, request(None)).await.into_body();
        backends.disable(&home).unwrap();
        let moved = send(&service, request(None)).await;
        let placement = moved.extensions().get::<Placement>().unwrap().clone();
        assert_eq!(placement.outcome, Outcome::Failover(Reason::Disabled));
        assert_eq!(
            sticky_cookie(&moved).is_some(),
            cookie_first,
            "cookie first: {cookie_first}"
        );
        assert_eq!(moved.headers().contains_key(&token), cookie_first);
        let cookie = sticky_cookie(&moved);
        let away = moved.into_body();
        assert_ne!(away, home);

        backends.enable(&home).unwrap();
        let next = send(&service, request(cookie.as_deref())).await;
        let expected = if cookie_first { &away } else { &home };
        assert_eq!(
            next.extensions().get::<Placement>().unwrap().outcome,
            Outcome::Hit
        );
        assert_eq!(next.into_body(), *expected, "cookie first: {cookie_first}");
    }
}

/// Three Tomcat-style nodes, each answering to the route of its name.
fn tomcat_nodes() -> Backends<Svc> {
    Backends::new(
        config_with(&[SECRET]),
        ["node1", "node2", "node3"].map(|n| (BackendSpec::new(n).route(n), named(n))),
    )
    .unwrap()
}

/// A route naming no backend (its node was removed) leaves the next key in
/// the chain to place the session, so that it stays together.
#[tokio::test]
async fn an_unknown_route_leaves_the_next_key_to_place_the_request() {
    let backends = tomcat_nodes();
    let service = layer_service(
        StickyLayer::new().affinity([
            Affinity::Route("JSESSIONID".into()),
            Affinity::Header(HeaderName::from_static("x-user")),
        ]),
        backends,
    );
    let request = |route: &str, user: &str| {
        Request::get("/")
            .header(COOKIE, format!("JSESSIONID=ABC123.{route}"))
            .header("x-user", user)
            .body(String::new())
            .unwrap()
    };
    for user in ["u1", "u2", "u3", "u4", "u5", "u6"] {
        let mut homes = Vec::new();
        for _ in 0..4 {
            let r = send(&service, request("gone", user)).await;
            let placement = r.extensions().get::<Placement>().unwrap().clone();
            assert_eq!(placement.source, tower_sticky::KeySource::Header, "{user}");
            homes.push(r.into_body());
        }
        assert!(homes.iter().all(|h| *h == homes[0]), "{user}: {homes:?}");
        // A route that names a backend still comes first.
        let r = send(&service, request("node2", user)).await;
        let placement = r.extensions().get::<Placement>().unwrap().clone();
        assert_eq!(placement.source, tower_sticky::KeySource::Route);
        assert_eq!(r.into_body(), "node2");
    }
}

/// A cookie that does not check out (say, signed with a retired key) must
/// not cost a Tomcat-style session its node: the route places it, and the
/// cookie is replaced with one for that node.
#[tokio::test]
async fn a_bad_cookie_leaves_the_route_to_place_the_request() {
    let backends = tomcat_nodes();
    let service = layer_service(
        StickyLayer::new().affinity([Affinity::Cookie, Affinity::Route("JSESSIONID".into())]),
        backends,
    );
    let retired = {
        let other = Sticky::new(backends_of(
            config_with(&["a retired key, 32 bytes long."]),
            &["node1"],
        ));
        session(&other).await.0
    };
    for node in ["node1", "node2", "node3"] {
        for bad in ["sticky=forged-value", &retired[..]] {
            let cookie = format!("{bad}; JSESSIONID=ABC123.{node}");
            let r = get(&service, Some(&cookie)).await;
            let placement = r.extensions().get::<Placement>().unwrap().clone();
            assert_eq!(placement.outcome, Outcome::Invalid, "{cookie}");
            assert_eq!(placement.source, tower_sticky::KeySource::Route, "{cookie}");
            let fresh = sticky_cookie(&r).expect("the bad cookie is replaced");
            assert_eq!(r.into_body(), node, "{cookie}");

            let r = get(
                &service,
                Some(&format!("{fresh}; JSESSIONID=ABC123.{node}")),
            )
            .await;
            let placement = r.extensions().get::<Placement>().unwrap().clone();
            assert_eq!(
                (placement.outcome, placement.source),
                (Outcome::Hit, tower_sticky::KeySource::Cookie)
            );
            assert_eq!(sticky_cookie(&r), None, "nothing left to repair");
            assert_eq!(r.into_body(), node);
        }
    }
}

#[tokio::test]
async fn token_header_serves_clients_without_cookies() {
    let name = HeaderName::from_static("x-sticky");
    let service = layer_service(StickyLayer::new().token_header(name.clone()), three());
    let first = get(&service, None).await;
    let token = first.headers()[&name].to_str().unwrap().to_owned();
    let home = first.into_body();
    for _ in 0..5 {
        let r = send(
            &service,
            Request::get("/")
                .header(&name, &token)
                .body(String::new())
                .unwrap(),
        )
        .await;
        assert_eq!(
            r.extensions().get::<Placement>().unwrap().source,
            tower_sticky::KeySource::TokenHeader
        );
        assert!(r.headers().get(&name).is_none());
        assert_eq!(r.into_body(), home);
    }
}

/// A backend whose readiness is held until a gate opens.
#[derive(Clone)]
struct Gated {
    open: Arc<tokio::sync::Notify>,
    is_open: Arc<std::sync::atomic::AtomicBool>,
    inner: Svc,
}

impl Service<Request<String>> for Gated {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = <Svc as Service<Request<String>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.is_open.load(Ordering::SeqCst) {
            return self.inner.poll_ready(cx);
        }
        let notified = self.open.notified();
        let mut notified = std::pin::pin!(notified);
        if notified.as_mut().poll(cx).is_ready() {
            return self.inner.poll_ready(cx);
        }
        // Re-poll when the gate opens.
        let waker = cx.waker().clone();
        let open = Arc::clone(&self.open);
        tokio::spawn(async move {
            open.notified().await;
            waker.wake();
        });
        Poll::Pending
    }

    fn call(&mut self, request: Request<String>) -> Self::Future {
        self.inner.call(request)
    }
}

#[tokio::test]
async fn a_backend_slow_to_become_ready_does_not_delay_the_others() {
    let gate = Gated {
        open: Arc::new(tokio::sync::Notify::new()),
        is_open: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        inner: named("slow"),
    };
    let backends = Backends::new(
        config_with(&[SECRET]),
        [
            (BackendSpec::new("slow"), Svc::new(gate.clone())),
            (BackendSpec::new("fast"), named("fast")),
        ],
    )
    .unwrap();
    let service = Sticky::new(backends);
    // New sessions alternate: collect a parked request for "slow" and a
    // session on "fast".
    let mut parked = Vec::new();
    let mut fast_cookie = None;
    while fast_cookie.is_none() || parked.is_empty() {
        let mut call = Box::pin(service.clone().oneshot(Request::new(String::new())));
        match call
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
        {
            Poll::Ready(r) => {
                fast_cookie = sticky_cookie(&r.unwrap().map(ResponseBody::into_inner))
            }
            Poll::Pending => parked.push(call),
        }
    }
    // The fast backend answers while the slow one is still not ready.
    let cookie = fast_cookie.unwrap();
    for _ in 0..10 {
        assert_eq!(get(&service, Some(&cookie)).await.into_body(), "fast");
    }
    gate.is_open.store(true, Ordering::SeqCst);
    gate.open.notify_waiters();
    for call in parked {
        assert_eq!(call.await.unwrap().into_body().into_inner(), "slow");
    }
}

#[tokio::test]
async fn connection_errors_are_retried_once_on_the_next_candidate() {
    // "down" fails readiness: nothing is sent, the request moves on.
    let down = Svc::new(
        tower::service_fn(|_r: Request<String>| async {
            Ok::<_, BoxError>(Response::new(String::new()))
        })
        .map_err(|e: BoxError| e),
    );
    let refusing = RefuseReady(down);
    // "unsent" hands the request back from call().
    let unsent = Svc::new(service_fn(|req: Request<String>| async move {
        Err::<Response<String>, BoxError>(Box::new(Unsent::new(req, "connection refused")))
    }));
    let backends = Backends::new(
        config_with(&[SECRET]),
        [
            (BackendSpec::new("a-refusing"), Svc::new(refusing)),
            (BackendSpec::new("b-unsent"), unsent),
            (BackendSpec::new("c-up"), named("c-up")),
        ],
    )
    .unwrap();
    let service = layer_service(
        StickyLayer::new().affinity([Affinity::Header(HeaderName::from_static("x-k"))]),
        backends,
    );
    let mut retried = 0;
    for i in 0..60 {
        let request = Request::get("/")
            .header("x-k", format!("k{i}"))
            .body(String::new())
            .unwrap();
        match service.clone().oneshot(request).await {
            Ok(r) => {
                let placement = r.extensions().get::<Placement>().unwrap().clone();
                if placement.outcome == Outcome::Failover(Reason::Unhealthy) {
                    retried += 1;
                }
                // The key's next candidate took it.
                assert_eq!(placement.source, tower_sticky::KeySource::Header);
                assert_eq!(r.into_body().into_inner(), "c-up");
            }
            // Retried once only: a key whose next candidate is also down fails.
            Err(Error::Backend { backend, .. }) => assert_ne!(backend.as_str(), "c-up"),
            Err(other) => panic!("{other}"),
        }
    }
    assert!(retried > 0);
}

/// With no other backend to move to, a connection error is the backend's
/// failure (a gateway answers 502), not a refusal to place the request
/// (503).
#[tokio::test]
async fn a_lone_backend_that_refuses_connections_is_a_backend_failure() {
    let unsent = Svc::new(service_fn(|req: Request<String>| async move {
        Err::<Response<String>, BoxError>(Box::new(Unsent::new(req, "connection refused")))
    }));
    let backends =
        Backends::new(config_with(&[SECRET]), [(BackendSpec::new("only"), unsent)]).unwrap();
    let service = Sticky::new(backends);
    let error = service
        .oneshot(Request::get("/").body(String::new()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(error.status(), StatusCode::BAD_GATEWAY, "{error}");
    assert!(
        matches!(&error, Error::Backend { backend, .. } if backend.as_str() == "only"),
        "{error}"
    );
}

/// Load shedding in a backend's own stack, where the layer's docs put it:
/// a shed request is the backend being busy, so it answers 503 and does
/// not take the backend out of service (which would pile its load on the
/// others).
#[tokio::test]
async fn a_request_shed_by_a_busy_backend_is_503_and_not_a_health_failure() {
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = Arc::clone(&release);
    let busy = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(1)
        .service(service_fn(move |_r: Request<String>| {
            let (entered, gate) = (entered_tx.clone(), Arc::clone(&gate));
            async move {
                let _ = entered.send(());
                gate.acquire().await.unwrap().forget();
                Ok::<_, BoxError>(Response::new("busy".to_string()))
            }
        }));
    let health = resting_after(1);
    let backends = Backends::new(
        config_with(&[SECRET]).health(health),
        [(BackendSpec::new("busy"), Svc::new(busy))],
    )
    .unwrap();
    let service = Sticky::new(backends.clone());

    let meanwhile = async {
        entered.recv().await.unwrap();
        // The one slot is taken: this request is shed.
        let error = service
            .clone()
            .oneshot(Request::get("/").body(String::new()).unwrap())
            .await
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE, "{error}");
        let state = backends.status()[0].state;
        assert_eq!(state, sticky_core::BackendState::Active);
        release.add_permits(2);
    };
    let (first, ()) = tokio::join!(get(&service, None), meanwhile);
    assert_eq!(first.into_body(), "busy");
    assert_eq!(get(&service, None).await.into_body(), "busy");
}

/// Errors the layer is told say nothing of a backend's health (a caller's
/// own deadline, say) leave it in service; the others still count.
#[tokio::test]
async fn errors_left_out_of_health_keep_the_backend_in_service() {
    #[derive(Debug)]
    struct Deadline;
    impl std::fmt::Display for Deadline {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the caller's deadline passed")
        }
    }
    impl std::error::Error for Deadline {}

    let failing = Svc::new(service_fn(|r: Request<String>| async move {
        match r.uri().path() {
            "/deadline" => Err::<Response<String>, BoxError>(Box::new(Deadline)),
            _ => Err("broken".into()),
        }
    }));
    let health = resting_after(2);
    let backends = Backends::new(
        config_with(&[SECRET]).health(health),
        [(BackendSpec::new("slow"), failing)],
    )
    .unwrap();
    let layer = StickyLayer::new().failure_errors(|e| !e.is::<Deadline>());
    let service = layer_service(layer, backends.clone());
    let state = || backends.status()[0].state;
    for _ in 0..5 {
        let request = Request::get("/deadline").body(String::new()).unwrap();
        service.clone().oneshot(request).await.unwrap_err();
    }
    assert_eq!(state(), sticky_core::BackendState::Active);
    for _ in 0..2 {
        let request = Request::get("/other").body(String::new()).unwrap();
        service.clone().oneshot(request).await.unwrap_err();
    }
    assert_eq!(state(), sticky_core::BackendState::Unhealthy);
}

/// Counts the events at one level.
struct EventCount(tracing::Level, Arc<AtomicUsize>);

impl tracing::Subscriber for EventCount {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == self.0 {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Passive health taking a backend out is logged, once, as a warning:
/// operators see it without debug logs.
#[test]
fn a_backend_taken_out_by_passive_health_is_logged_once() {
    let failing = Svc::new(service_fn(|_r: Request<String>| async {
        let mut r = Response::new(String::new());
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        Ok::<_, BoxError>(r)
    }));
    let backends = beside_a_healthy_one("bad", failing, resting_after(2));
    let service = Sticky::new(backends.clone());
    let warnings = Arc::new(AtomicUsize::new(0));
    let subscriber = EventCount(tracing::Level::WARN, Arc::clone(&warnings));
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            for _ in 0..10 {
                get(&service, None).await;
            }
        });
    });
    assert_eq!(
        backends.status()[0].state,
        sticky_core::BackendState::Unhealthy
    );
    assert_eq!(warnings.load(Ordering::SeqCst), 1);
}

/// A backend whose own stack times the request out answers 504; a
/// request no backend can take answers 503 with its outcome attached.
#[tokio::test]
async fn a_timed_out_backend_is_504_and_a_rejection_names_its_reason() {
    let stuck = ServiceBuilder::new()
        .timeout(std::time::Duration::from_millis(10))
        .service(service_fn(|_r: Request<String>| {
            std::future::pending::<Result<Response<String>, BoxError>>()
        }));
    let backends = Backends::new(
        config_with(&[SECRET]),
        [(BackendSpec::new("stuck"), Svc::new(stuck))],
    )
    .unwrap();
    let service = Sticky::new(backends.clone()).errors_as_responses();
    let request = || Request::get("/").body(String::new()).unwrap();
    let r = service
        .clone()
        .oneshot(request())
        .await
        .unwrap()
        .map(ResponseBody::into_inner);
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);

    backends.disable("stuck").unwrap();
    let r = service
        .oneshot(request())
        .await
        .unwrap()
        .map(ResponseBody::into_inner);
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.extensions().get::<Outcome>(),
        Some(&Outcome::Rejected(Reason::Unavailable))
    );
}

/// A response that streams counts as in flight on its backend until its
/// body ends, or is dropped: a long stream is load, for the counters and
/// the load bounds.
#[tokio::test]
async fn a_streaming_response_is_in_flight_until_its_body_is_over() {
    use http_body_util::{BodyExt, StreamBody};
    type Chunk = Result<http_body::Frame<bytes::Bytes>, Infallible>;
    let (senders_tx, mut senders) = tokio::sync::mpsc::unbounded_channel();
    let streaming = service_fn(move |_r: Request<String>| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Chunk>();
        senders_tx.send(tx).unwrap();
        let body = StreamBody::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        async move { Ok::<_, BoxError>(Response::new(body)) }
    });
    let backends = Backends::new(
        config_with(&[SECRET]),
        [(BackendSpec::new("stream"), streaming)],
    )
    .unwrap();
    let service = Sticky::new(backends.clone());
    let in_flight = || backends.status()[0].counters.in_flight;
    let request = || Request::get("/").body(String::new()).unwrap();

    let response = service.clone().oneshot(request()).await.unwrap();
    let chunks = senders.recv().await.unwrap();
    let mut body = response.into_body();
    assert_eq!(in_flight(), 1, "under way while the body streams");
    chunks
        .send(Ok(http_body::Frame::data("one".into())))
        .unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "one");
    assert_eq!(in_flight(), 1);
    drop(chunks);
    assert!(body.frame().await.is_none());
    assert_eq!(in_flight(), 0, "done once the body ended");

    let response = service.oneshot(request()).await.unwrap();
    let _chunks = senders.recv().await.unwrap();
    assert_eq!(in_flight(), 1);
    drop(response);
    assert_eq!(in_flight(), 0, "done once the body is dropped");
}

/// An error wrapped in `Unsent` is read through: a refused connection
/// rests the backend at once, as a bare one does, and a connection that
/// timed out before the request went is a 504 like any other timeout.
#[tokio::test]
async fn an_unsent_requests_error_is_read_through() {
    let refusing = Svc::new(service_fn(|r: Request<String>| async move {
        let error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        Err::<Response<String>, BoxError>(Box::new(Unsent::new(r, error)))
    }));
    let backends = Backends::new(
        config_with(&[SECRET]),
        [
            (BackendSpec::new("down"), refusing),
            (BackendSpec::new("up"), named("up")),
        ],
    )
    .unwrap();
    let service = Sticky::new(backends.clone());
    for _ in 0..4 {
        assert_eq!(get(&service, None).await.into_body(), "up");
    }
    let down = &backends.status()[0];
    assert_eq!(
        down.state,
        sticky_core::BackendState::Unhealthy,
        "rested after one refusal"
    );
    assert_eq!(down.counters.failures, 1);
}

#[tokio::test]
async fn an_unsent_requests_timeout_is_504() {
    let timing_out = Svc::new(service_fn(|r: Request<String>| async move {
        let error = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
        Err::<Response<String>, BoxError>(Box::new(Unsent::new(r, error)))
    }));
    let backends = Backends::new(
        config_with(&[SECRET]),
        [(BackendSpec::new("far"), timing_out)],
    )
    .unwrap();
    let error = Sticky::new(backends)
        .oneshot(Request::get("/").body(String::new()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(error.status(), StatusCode::GATEWAY_TIMEOUT, "{error}");
}

#[derive(Clone)]
struct RefuseReady(Svc);

impl Service<Request<String>> for RefuseReady {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = <Svc as Service<Request<String>>>::Future;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err("connect: connection refused".into()))
    }
    fn call(&mut self, request: Request<String>) -> Self::Future {
        self.0.call(request)
    }
}

#[tokio::test]
async fn failing_statuses_take_a_backend_out_and_its_sessions_fail_over() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let broken = Svc::new(service_fn(move |_r: Request<String>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            let mut r = Response::new("broken".to_string());
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, BoxError>(r)
        }
    }));
    let backends = beside_a_healthy_one("broken", broken, resting_after(3));
    let service = Sticky::new(backends.clone());
    let mut cookie = None;
    while cookie.is_none() {
        let r = get(&service, None).await;
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            cookie = sticky_cookie(&r);
        }
    }
    let cookie = cookie.unwrap();
    for _ in 0..2 {
        assert_eq!(
            get(&service, Some(&cookie)).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let r = get(&service, Some(&cookie)).await;
    assert_eq!(
        r.extensions().get::<Outcome>(),
        Some(&Outcome::Failover(Reason::Unhealthy))
    );
    assert_eq!(r.into_body(), "ok");
    let status = backends.status();
    assert_eq!(status[0].state, sticky_core::BackendState::Unhealthy);
    assert_eq!(status[0].counters.failures, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // An operator's enable ends the rest at once: the session goes back.
    backends.enable("broken").unwrap();
    assert_eq!(
        backends.status()[0].state,
        sticky_core::BackendState::Active
    );
    let r = get(&service, Some(&cookie)).await;
    assert_eq!(r.extensions().get::<Outcome>(), Some(&Outcome::Hit));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

/// A backend the pool refuses leaves nothing behind: its name can be
/// added properly afterwards, and an `upsert` that reports success has
/// added the backend.
#[tokio::test]
async fn a_refused_upsert_leaves_the_name_free() {
    use sticky_core::ConfigError;
    let backends = Backends::new(
        config_with(&[SECRET]),
        [(
            BackendSpec::new("tomcat-a").route("node2"),
            named("tomcat-a"),
        )],
    )
    .unwrap();
    assert!(matches!(
        backends.upsert("node2", named("node2")),
        Err(ConfigError::DuplicateRoute { .. })
    ));
    assert!(matches!(
        backends.upsert("", named("node2")),
        Err(ConfigError::EmptyName)
    ));
    assert!(matches!(
        backends.add(BackendSpec::new(""), named("node2")),
        Err(ConfigError::EmptyName)
    ));
    assert!(matches!(
        backends.remove("node2"),
        Err(ConfigError::Unknown(_))
    ));
    backends.remove("tomcat-a").unwrap();
    backends.upsert("node2", named("node2")).unwrap();
    let names: Vec<String> = backends
        .status()
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, ["node2"]);
    let service = Sticky::new(backends);
    assert_eq!(get(&service, None).await.into_body(), "node2");
}

#[tokio::test]
async fn discover_stream_drives_membership() {
    use tower::discover::Change;
    let backends = backends_of(config_with(&[SECRET]), &["b1"]);
    let (tx, rx) =
        tokio::sync::mpsc::unbounded_channel::<Result<Change<String, Svc>, Infallible>>();
    let driver = {
        let backends = backends.clone();
        tokio::spawn(async move {
            backends
                .discover(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
                .await
        })
    };
    tx.send(Ok(Change::Insert("b2".into(), named("b2"))))
        .unwrap();
    tx.send(Ok(Change::Remove("b1".into()))).unwrap();
    drop(tx);
    driver.await.unwrap().unwrap();
    let names: Vec<String> = backends
        .status()
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, vec!["b2"]);
    assert_eq!(get(&Sticky::new(backends), None).await.into_body(), "b2");
}

/// Backends with a concrete error type, as axum routes, hyper clients and
/// tonic channels have: the whole call is `Send` and spawns on any worker.
type SendSvc = tower::util::BoxCloneSyncService<Request<String>, Response<String>, Infallible>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_sessions_never_misroute() {
    let backend = |name: &'static str| {
        SendSvc::new(service_fn(move |_r: Request<String>| async move {
            Ok(Response::new(name.to_string()))
        }))
    };
    let names = ["b1", "b2", "b3", "b4", "b5"];
    let backends = Backends::new(
        config_with(&[SECRET]),
        names.map(|n| (BackendSpec::new(n), backend(n))),
    )
    .unwrap();
    let service = Sticky::new(backends.clone());
    let misroutes = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let service = service.clone();
        let misroutes = Arc::clone(&misroutes);
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                let first = service
                    .clone()
                    .oneshot(Request::new(String::new()))
                    .await
                    .unwrap();
                let cookie = first.headers()[SET_COOKIE]
                    .to_str()
                    .unwrap()
                    .split(';')
                    .next()
                    .unwrap()
                    .to_owned();
                let home = first.into_body().into_inner();
                for _ in 0..3 {
                    let request = Request::get("/")
                        .header(COOKIE, &cookie)
                        .body(String::new())
                        .unwrap();
                    if service
                        .clone()
                        .oneshot(request)
                        .await
                        .unwrap()
                        .map(ResponseBody::into_inner)
                        .into_body()
                        != home
                    {
                        misroutes.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    // Meanwhile, weights change: bound sessions must not notice.
    for w in [3, 1, 5, 2] {
        backends.set_weight("b1", w).unwrap();
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(misroutes.load(Ordering::SeqCst), 0);
    let total: u64 = backends
        .status()
        .iter()
        .map(|s| s.counters.new_sessions)
        .sum();
    assert_eq!(total, 3200);
    let hits: u64 = backends.status().iter().map(|s| s.counters.hits).sum();
    assert_eq!(hits, 9600);
}

#[tokio::test]
async fn header_only_clients_can_go_without_set_cookie() {
    let name = HeaderName::from_static("x-sticky");
    let layer = StickyLayer::new()
        .token_header(name.clone())
        .send_cookie(false);
    let service = layer_service(layer, three());
    let first = get(&service, None).await;
    assert!(first.headers().get(&name).is_some());
    assert!(first.headers().get(SET_COOKIE).is_none());
    assert!(first.headers().get(CACHE_CONTROL).is_none());
}

/// Under a keyed load bound, a hot key's request that its busy owner
/// cannot take goes to the next backend without a cookie, even with
/// cookies in the chain: the key's later requests go back to the owner.
#[tokio::test]
async fn a_key_passed_on_by_the_load_bound_gets_no_cookie_and_comes_back() {
    let names = ["b1", "b2", "b3", "b4"];
    let (hold, held) = tokio::sync::watch::channel(false);
    let owner = Arc::new(std::sync::Mutex::new(None::<&'static str>));
    // Each backend answers at once, except the owner while `hold` is set.
    let backend = |name: &'static str| {
        let held = held.clone();
        let owner = Arc::clone(&owner);
        Svc::new(service_fn(move |_: Request<String>| {
            let mut held = held.clone();
            let is_owner = *owner.lock().unwrap() == Some(name);
            async move {
                if is_owner {
                    held.wait_for(|held| !*held).await?;
                }
                Ok::<_, BoxError>(Response::new(name.to_string()))
            }
        }))
    };
    let backends = Backends::new(
        config_with(&[SECRET]).keyed_bound(1.25),
        names.map(|n| (BackendSpec::new(n), backend(n))),
    )
    .unwrap();
    let service = layer_service(
        StickyLayer::new().affinity(vec![
            Affinity::Cookie,
            Affinity::Header(HeaderName::from_static("x-tenant")),
        ]),
        backends,
    );
    let hot = || {
        Request::get("/")
            .header("x-tenant", "hot")
            .body(String::new())
            .unwrap()
    };
    let first = send(&service, hot()).await;
    assert_eq!(sticky_cookie(&first), None, "a header key needs no cookie");
    let home = first.into_body();
    *owner.lock().unwrap() = names.into_iter().find(|&n| n == home);

    // Requests of the hot key pile up on its owner until it is over the
    // bound; the next one goes elsewhere.
    hold.send_replace(true);
    let mut parked = Vec::new();
    let passed_on = loop {
        let mut call = Box::pin(service.clone().oneshot(hot()));
        match call
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
        {
            Poll::Pending => parked.push(call),
            Poll::Ready(r) => break r.unwrap().map(ResponseBody::into_inner),
        }
        assert!(parked.len() < 10, "the owner took every request");
    };
    let placement = passed_on.extensions().get::<Placement>().unwrap().clone();
    assert_eq!(placement.outcome, Outcome::Failover(Reason::Overloaded));
    assert_eq!(placement.source, tower_sticky::KeySource::Header);
    assert_eq!(sticky_cookie(&passed_on), None);
    assert_ne!(passed_on.into_body(), home);

    hold.send_replace(false);
    for call in parked {
        assert_eq!(call.await.unwrap().into_body().into_inner(), home);
    }
    let back = send(&service, hot()).await;
    assert_eq!(
        back.extensions().get::<Placement>().unwrap().outcome,
        Outcome::Hit
    );
    assert_eq!(sticky_cookie(&back), None);
    assert_eq!(back.into_body(), home);
}
