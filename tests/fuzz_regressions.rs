//! Inputs the fuzzers found interesting (a spread of each target's corpus,
//! from the runs recorded in TESTING.md), replayed through the same code
//! the fuzz targets run, so a change that breaks on one fails here first.

#[path = "../fuzz/fuzz_targets/cases.rs"]
mod cases;

use std::path::Path;

fn replay(target: &str, case: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| case(&data));
        assert!(outcome.is_ok(), "{target}: {} panics", path.display());
        count += 1;
    }
    assert!(
        count >= 10,
        "{target}: only {count} saved inputs in {}",
        dir.display()
    );
}

#[test]
fn token_inputs() {
    replay("token", cases::token);
}

#[test]
fn request_key_inputs() {
    replay("request_keys", cases::request_keys);
}

#[test]
fn forwarded_inputs() {
    replay("forwarded", cases::forwarded);
}
