//! Client-IP extraction: X-Forwarded-For and Forwarded, under both trust
//! policies, from any header bytes.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use tower_sticky::{Affinity, ClientIp, Limits, Sticky, StickyLayer};

#[path = "common.rs"]
mod common;

fn services() -> &'static [Sticky<common::Svc>; 2] {
    static SERVICES: OnceLock<[Sticky<common::Svc>; 2]> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let layer = |policy| {
            StickyLayer::new()
                .affinity([Affinity::ClientIp])
                .client_ip(policy)
                .limits(Limits { forwarded_hops: 16, ..Limits::default() })
        };
        [
            common::sticky(layer(ClientIp::TrustedHops(3))),
            common::sticky(layer(ClientIp::TrustedNetworks(vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ]))),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let parts = common::parts(data, 3);
    for service in services() {
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
        common::run(service, request);
    }
});
