//! What the layer adds to a request: `Sticky` over three backends against
//! calling one backend directly.
//!
//! - `direct`: the backend alone (`oneshot` on a clone).
//! - `new_session`: through `Sticky`, no cookie: weighted pick, token
//!   sealed, `Set-Cookie` built, `Cache-Control` added.
//! - `returning`: through `Sticky` with a valid cookie among three others:
//!   cookie parsing, token verification, dispatch, `Outcome` extension.
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
use tower::{service_fn, ServiceExt};
use tower_sticky::{Backends, Sticky};

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
    let sticky = Sticky::new(backends);
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

    let mut group = c.benchmark_group("layer");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.bench_function("direct", |b| {
        b.iter(|| ready(direct.clone().oneshot(black_box(Request::new(())))))
    });
    group.bench_function("new_session", |b| {
        b.iter(|| ready(sticky.clone().oneshot(black_box(Request::new(())))))
    });
    group.bench_function("returning", |b| {
        b.iter(|| {
            let request = Request::builder()
                .header(COOKIE, header.as_str())
                .body(())
                .expect("valid request");
            let response = ready(sticky.clone().oneshot(black_box(request))).expect("a response");
            debug_assert!(response.headers().get(SET_COOKIE).is_none());
            response
        })
    });
    group.bench_function("direct_with_cookie_header", |b| {
        b.iter(|| {
            let request = Request::builder()
                .header(COOKIE, header.as_str())
                .body(())
                .expect("valid request");
            ready(direct.clone().oneshot(black_box(request)))
        })
    });
    group.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);
