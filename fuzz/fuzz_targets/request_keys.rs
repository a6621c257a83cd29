//! Key extraction from any request: Cookie headers (several), path
//! parameters, the query, and a hashed header, through the whole chain.
#![no_main]

use std::sync::OnceLock;

use http::{HeaderName, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use tower_sticky::{Affinity, Sticky, StickyLayer};

#[path = "common.rs"]
mod common;

fn service() -> &'static Sticky<common::Svc> {
    static SERVICE: OnceLock<Sticky<common::Svc>> = OnceLock::new();
    SERVICE.get_or_init(|| {
        common::sticky(
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
    })
}

fuzz_target!(|data: &[u8]| {
    let parts = common::parts(data, 5);
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
    common::run(service(), request);
});
