//! Token decoding and deciding with any text as the LB cookie.
#![no_main]

#[allow(dead_code)] // each target uses one of the cases
#[path = "cases.rs"]
mod cases;

libfuzzer_sys::fuzz_target!(|data: &[u8]| cases::token(data));
