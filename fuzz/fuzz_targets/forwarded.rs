//! Client-IP extraction from any X-Forwarded-For / Forwarded headers.
#![no_main]

#[allow(dead_code)] // each target uses one of the cases
#[path = "cases.rs"]
mod cases;

libfuzzer_sys::fuzz_target!(|data: &[u8]| cases::forwarded(data));
