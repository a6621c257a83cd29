// Shared by the request fuzz targets: a Sticky service over immediate
// backends, and a way to run one request through it.

use std::convert::Infallible;
use std::future::Future;
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
use sticky_core::{BackendSpec, PoolConfig};
use tower::{service_fn, ServiceExt};
use tower_sticky::{Backends, Sticky, StickyLayer};

pub type Svc = tower::util::BoxCloneSyncService<Request<()>, Response<()>, Infallible>;

pub fn sticky(layer: StickyLayer) -> Sticky<Svc> {
    let backend = || Svc::new(service_fn(|_r: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }));
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
pub fn run(service: &Sticky<Svc>, request: Request<()>) {
    let future = service.clone().oneshot(request);
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => {
            result.expect("immediate backends never fail");
        }
        Poll::Pending => panic!("an immediate backend left the request pending"),
    }
}

/// Splits fuzz input into `n` parts at 0xFF bytes.
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |&b| b == 0xff).collect();
    out.resize(n, &[]);
    out
}
