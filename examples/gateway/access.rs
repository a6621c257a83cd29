//! The access log (`--access-log`): one line per request, logged when its
//! response head goes out (as HAProxy's `option logasap` does, so that a
//! long download or event stream is logged when it starts, not when it
//! ends), under the target `access` at level info:
//!
//! ```text
//! INFO access: client=127.0.0.1:51234 method=GET uri=/cart status=200 backend=b2 outcome=hit reason=- source=cookie ms=0.41
//! ```
//!
//! `uri` is the request target as sent (path and query), `backend` the
//! backend that answered or failed (`-` when none did), `outcome` how the
//! request was placed (`new`, `hit`, `refreshed`, `expired`, `invalid`,
//! `failover`, or `rejected` when no backend could take it; `refused` when
//! the gateway answered it itself before placing it, and `failed` when its
//! backend failed), `reason` why a session failed over or was rejected
//! (`unhealthy`, `disabled`, `removed`, ...), `source` where its key came
//! from (`none` when the weights placed it), and `ms` the time from the
//! request head to the response head, in milliseconds.

use std::net::SocketAddr;
use std::time::Instant;

use http::{Method, Response, Uri};
use tower_sticky::sticky_core::Outcome;
use tower_sticky::{Error, Placement};

/// A request being timed for the access log.
pub struct Access {
    started: Instant,
    client: SocketAddr,
    method: Method,
    uri: Uri,
}

/// What became of a request, for its line.
pub enum Fate<'a> {
    /// Answered by the gateway before any backend was chosen.
    Refused,
    /// Placed, and the backend answered or failed: the response carries
    /// its [`Placement`] if it answered.
    Placed,
    /// The layer's error: no backend could take it, or its backend failed.
    Failed(&'a Error),
}

impl Access {
    /// Starts timing a request from `client` with this method and target.
    pub fn start(client: SocketAddr, method: &Method, uri: &Uri) -> Self {
        Self {
            started: Instant::now(),
            client,
            method: method.clone(),
            uri: uri.clone(),
        }
    }

    /// Logs the request's line, now that `response`'s head is ready.
    pub fn log<B>(self, response: &Response<B>, fate: Fate<'_>) {
        let placement = response.extensions().get::<Placement>();
        let (backend, outcome, reason, source) = match (fate, placement) {
            (Fate::Refused, _) => ("-", "refused", "-", "-"),
            (Fate::Failed(Error::Rejected(reason)), _) => ("-", "rejected", reason.as_str(), "-"),
            (Fate::Failed(Error::Backend { backend, .. }), _) => {
                (backend.as_str(), "failed", "-", "-")
            }
            (Fate::Placed, Some(p)) => {
                let reason = match p.outcome {
                    Outcome::Failover(reason) | Outcome::Rejected(reason) => reason.as_str(),
                    _ => "-",
                };
                (
                    p.backend.as_str(),
                    p.outcome.as_str(),
                    reason,
                    p.source.as_str(),
                )
            }
            (Fate::Placed, None) => ("-", "-", "-", "-"),
        };
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: "access",
            client = %self.client,
            method = %self.method,
            uri = %self.uri,
            status = response.status().as_u16(),
            backend = %backend,
            outcome = %outcome,
            reason = %reason,
            source = %source,
            ms = %format_args!("{ms:.2}"),
        );
    }
}
