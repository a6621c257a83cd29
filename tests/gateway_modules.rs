//! The gateway modules' own tests (admin API, client connections,
//! proxying, timeouts, keys, the access log, workers sharing a CPU,
//! which worker a thread is), run here because examples are not test
//! targets: `test = true` would make `cargo test` build the gateway only
//! as a test harness, not the binary the other gateway tests run.
// The modules are shared with the gateway binary; not all of them is
// used by the tests.
#![allow(dead_code)]

#[path = "../examples/gateway/access.rs"]
mod access;
#[path = "../examples/gateway/admin.rs"]
mod admin;
#[path = "../examples/gateway/client.rs"]
mod client;
#[path = "../examples/gateway/connection.rs"]
mod connection;
#[path = "../examples/gateway/health.rs"]
mod health;
#[path = "../examples/gateway/keys.rs"]
mod keys;
#[path = "../examples/gateway/latency.rs"]
mod latency;
#[path = "../examples/gateway/proxy.rs"]
mod proxy;
#[path = "../examples/gateway/stall.rs"]
mod stall;
#[path = "../examples/gateway/turns.rs"]
mod turns;
#[path = "../examples/gateway/worker.rs"]
mod worker;
