//! Key extraction from any request through the whole Sticky service.
#![no_main]

#[allow(dead_code)] // each target uses one of the cases
#[path = "cases.rs"]
mod cases;

libfuzzer_sys::fuzz_target!(|data: &[u8]| cases::request_keys(data));
