//! The gateway's admin API, tested through its router (the module's own
//! tests, run here because examples are not test targets).
// The proxy module is shared with the gateway binary; not all of it is
// used by the admin API.
#![allow(dead_code)]

#[path = "../examples/gateway/admin.rs"]
mod admin;
#[path = "../examples/gateway/proxy.rs"]
mod proxy;
