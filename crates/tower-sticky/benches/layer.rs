//! What the layer adds to a request: `Sticky` over three backends against
//! calling one backend directly.
//!
//! - `direct`: the backend alone (`oneshot` on a clone).
//! - `new_session`: through `Sticky`, no cookie: weighted pick, token
//!   sealed, `Set-Cookie` built, `Cache-Control` added.
//! - `returning`: through `Sticky` with a valid cookie among three others:
//!   cookie parsing, token verification, dispatch, `Outcome` extension.
//! - `returning_browser_header`: the same with a `Cookie` header the size
//!   browsers send to a site with analytics and a consent manager (25
//!   cookies, 1.6 KB), the LB cookie among them.
//! - `returning_browser_header_stripped`: the same, with `strip_cookie`:
//!   the LB cookie taken out of the header on its way to the backend.
//! - `direct_with_*`: the backend alone, given the same request.
//!
//! Backends answer at once, so futures are polled to completion without a
//! runtime and the difference is the layer's own cost. Run with:
//!
//! ```text
//! cargo bench -p tower-sticky --bench layer
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{COOKIE, SET_COOKIE};
use http::{Request, Response};
use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
use sticky_core::{BackendSpec, PoolConfig};
use tower::{service_fn, Layer, ServiceExt};
use tower_sticky::{Backends, Sticky, StickyLayer};

/// Polls a future that is ready at once.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("backends in this benchmark answer at once"),
    }
}

fn backend(
) -> impl tower::Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + Sync {
    service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) })
}

fn layer(c: &mut Criterion) {
    let keys = KeyRing::new(["a 32-byte secret shared by replicas"]).expect("valid key ring");
    let tokens = TokenCodec::new(
        keys,
        TokenConfig::new("sticky").idle_timeout(Duration::from_secs(1800)),
    );
    let backends = Backends::new(
        PoolConfig::new(tokens),
        ["b1", "b2", "b3"].map(|n| (BackendSpec::new(n), backend())),
    )
    .expect("valid pool");
    let sticky = Sticky::new(backends.clone());
    let stripping = StickyLayer::new().strip_cookie(true).layer(backends);
    let direct = backend();

    let first = ready(sticky.clone().oneshot(Request::new(()))).expect("a response");
    let cookie = first.headers()[SET_COOKIE]
        .to_str()
        .expect("ASCII")
        .split(';')
        .next()
        .expect("name=value")
        .to_owned();
    let header = format!("theme=dark; lang=en; {cookie}; consent=yes");
    let browser_header = browser_header(&cookie);

    let mut group = c.benchmark_group("layer");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.bench_function("direct", |b| {
        b.iter(|| ready(direct.clone().oneshot(black_box(Request::new(())))))
    });
    group.bench_function("new_session", |b| {
        b.iter(|| ready(sticky.clone().oneshot(black_box(Request::new(())))))
    });
    // Each request carrying a cookie is built inside the timed loop, as
    // a server would hand it over; the `direct_with_*` baselines build
    // the same one.
    let returning = |header: &str| {
        let request = with_cookie(header);
        let response = ready(sticky.clone().oneshot(black_box(request))).expect("a response");
        debug_assert!(response.headers().get(SET_COOKIE).is_none());
        response
    };
    group.bench_function("returning", |b| b.iter(|| returning(&header)));
    group.bench_function("direct_with_cookie_header", |b| {
        b.iter(|| ready(direct.clone().oneshot(black_box(with_cookie(&header)))))
    });
    group.bench_function("returning_browser_header", |b| {
        b.iter(|| returning(&browser_header))
    });
    group.bench_function("returning_browser_header_stripped", |b| {
        b.iter(|| {
            let request = with_cookie(&browser_header);
            ready(stripping.clone().oneshot(black_box(request))).expect("a response")
        })
    });
    group.bench_function("direct_with_browser_header", |b| {
        b.iter(|| {
            ready(
                direct
                    .clone()
                    .oneshot(black_box(with_cookie(&browser_header))),
            )
        })
    });
    group.finish();
}

/// A request with this `Cookie` header.
fn with_cookie(header: &str) -> Request<()> {
    Request::builder()
        .header(COOKIE, header)
        .body(())
        .expect("valid request")
}

/// A `Cookie` header like a browser's for a site with analytics, ads
/// and a consent manager: 24 cookies of the shapes such tools set, with
/// `lb` (the LB cookie's pair) two thirds of the way in.
fn browser_header(lb: &str) -> String {
    let consent = "CPzX1AAPzX1AAAHABBENDXCgAP_AAH_AAAAAIsNB_G_dTyPi-_59_vt0eY1P9_r_v-Qjhhfdt-8F3L_W_L0X42E7NF36pq4KuR4Eu3LBIQNlHMHUTUmwaokVrzHsak2cpyNKJ7LkmnsZe2dYGHtPn9lD-YKZ7_5_9_f52T_9_9_-39z3_9f___dv_-__-vjf_599n_v9fV_789Kf9____-_-___4IQQ";
    let pairs = [
        "_ga=GA1.1.1843075939.1700000000".to_owned(),
        "_gid=GA1.2.1129839481.1700000000".to_owned(),
        "_gcl_au=1.1.1609352384.1700000000".to_owned(),
        "_fbp=fb.1.1700000000000.1427263781".to_owned(),
        format!("euconsent-v2={consent}"),
        "OptanonAlertBoxClosed=2026-11-20T10:15:42.118Z".to_owned(),
        "OptanonConsent=isGpcEnabled=0&datestamp=Fri+Nov+20+2026+10%3A15%3A42+GMT%2B0100&version=202310.1.0&browserGpcFlag=0&isIABGlobal=false&hosts=&consentId=4f1c2a9e-5b3d-4e7a-9c1f-2d8e6b0a7c53&interactionCount=1&landingPath=NotLandingPage&groups=C0001%3A1%2CC0002%3A1%2CC0003%3A1%2CC0004%3A1".to_owned(),
        "_hjSessionUser_3012345=eyJpZCI6IjBkNGEyYjM1LTU3ZWQtNTk2Ny1hYjI0LWQ1ZjM4ZWY5YzM0OCIsImNyZWF0ZWQiOjE3MDAwMDAwMDAwMDAsImV4aXN0aW5nIjp0cnVlfQ==".to_owned(),
        "_hjSession_3012345=eyJpZCI6IjRlNmQ4ZjJhLTE3YjQtNDc5Ni04YjNhLTdiZmI2NjM0ZjJjOCIsImMiOjE3MDAwMDAwMDAwMDAsInMiOjAsInIiOjAsInNiIjowfQ==".to_owned(),
        "theme=dark".to_owned(),
        "lang=en-GB".to_owned(),
        "currency=EUR".to_owned(),
        "recently_viewed=1042%2C877%2C3310%2C95".to_owned(),
        "ab_checkout=variant-b".to_owned(),
        "_uetsid=6d0f1e20a1b211ee8c3b9f1e2d4c5a6b".to_owned(),
        "_uetvid=6d0f4a10a1b211eea0c7e1f2a3b4c5d6".to_owned(),
        lb.to_owned(),
        "_clck=1x2y3z4%7C2%7Cfh3%7C0%7C1420".to_owned(),
        "_clsk=abc123def456%7C1700000000000%7C3%7C1%7Cq.clarity.ms%2Fcollect".to_owned(),
        "csrftoken=Zk3Jw9Qx7Lp2Vb8Nc4Rt6Ym1Hs5Gd0Fa".to_owned(),
        "cookie_banner=dismissed".to_owned(),
        "_pin_unauth=dWlkPU5qTXdNR1ZsWlRjdE1EWmlNaTAwT1RZMUxUZ3pOVGN0TnpZeU9UVmpOMlUwT1RRMg".to_owned(),
        "__stripe_mid=8a2b4c6d-1e3f-4a5b-9c7d-0e1f2a3b4c5d6e7f8a".to_owned(),
        "__stripe_sid=1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d6e7f8a".to_owned(),
        "last_search=running+shoes".to_owned(),
    ];
    pairs.join("; ")
}

criterion_group!(benches, layer);
criterion_main!(benches);
