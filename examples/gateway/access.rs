//! The access log (`--access-log`): one line per request, logged when its
//! response head goes out (as HAProxy's `option logasap` does, so that a
//! long download or event stream is logged when it starts, not when it
//! ends), under the target `access` at level info:
//!
//! ```text
//! INFO access: client=127.0.0.1:51234 method=GET uri=/cart status=200 backend=b2 outcome=hit reason=- source=cookie ms=0.41
//! ```
//!
//! - `client`: the address the connection came from (with
//!   `--trusted-proxies`, the nearest proxy's, not the forwarded client's);
//! - `uri`: the target's path and query, whichever form the client sent
//!   it in (an HTTP/2 request's too), with any byte outside printable
//!   ASCII, and `\`, written as `\xHH`, so a line cannot be split or forged;
//! - `backend`: the backend that answered or failed, `-` when none did;
//! - `outcome`: how the request was placed (`new`, `hit`, `refreshed`,
//!   `expired`, `invalid`, `failover`), or `rejected` when no backend could
//!   take it, `refused` when the gateway answered it itself before placing
//!   it, `failed` when its backend failed, `client-failed` when its client
//!   broke its upload off, and `aborted` (status 499, as nginx writes) when
//!   it ended with no response: its client went away, or a timeout or a
//!   forced shutdown cut it;
//! - `reason`: why a session failed over or was rejected (`unhealthy`,
//!   `disabled`, `removed`, ...);
//! - `source`: where its key came from (`none` when the weights placed it);
//! - `ms`: the time from the request head to the response head (or to the
//!   end, for `aborted`), in milliseconds.
//!
//! A request so malformed that hyper answers it before the gateway sees it
//! (a 400 for a bad request line, a 431 for too large a head) has no line.
//!
//! The lines are written by a thread of their own, several in one write
//! when they come fast, not one `write(2)` per request on the workers. If
//! that thread falls 128,000 lines behind (the log's reader has stalled),
//! further lines are dropped rather than hold requests up, and counted
//! ([`dropped`], `sticky_gateway_access_lines_dropped_total`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use http::{Method, Response, Uri};
use tower_sticky::sticky_core::Outcome;
use tower_sticky::{Error, Placement};

/// Counts the lines the access log's writer dropped.
static DROPPED: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Takes the access log writer's count of dropped lines, for [`dropped`].
pub fn count_dropped(counter: tracing_appender::non_blocking::ErrorCounter) {
    let _ = DROPPED.set(counter);
}

/// How many access lines were dropped because their writer fell behind.
pub fn dropped() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// A request being timed for the access log. Dropped before its line is
/// written, it writes an `aborted` one.
pub struct Access {
    /// `None` once the line is written.
    request: Option<Request>,
}

struct Request {
    started: Instant,
    client: SocketAddr,
    method: Method,
    uri: Uri,
}

/// What became of a request, for its line.
pub enum Fate<'a> {
    /// Answered by the gateway before any backend was chosen.
    Refused,
    /// Placed, and the backend answered: the response carries its
    /// [`Placement`].
    Placed,
    /// Its client broke its upload off (the backend was `backend`).
    ClientFailed(&'a Error),
    /// The layer's error: no backend could take it, or its backend failed.
    Failed(&'a Error),
}

/// The fields after `status`: backend, outcome, reason, source.
type Fields<'a> = (&'a str, &'a str, &'a str, &'a str);

impl Access {
    /// Starts timing a request from `client` with this method and target.
    pub fn start(client: SocketAddr, method: &Method, uri: &Uri) -> Self {
        Self {
            request: Some(Request {
                started: Instant::now(),
                client,
                method: method.clone(),
                uri: uri.clone(),
            }),
        }
    }

    /// Logs the request's line, now that `response`'s head is ready.
    pub fn log<B>(mut self, response: &Response<B>, fate: Fate<'_>) {
        let Some(request) = self.request.take() else {
            return;
        };
        let placement = response.extensions().get::<Placement>();
        let fields: Fields<'_> = match (fate, placement) {
            (Fate::Refused, _) => ("-", "refused", "-", "-"),
            (Fate::ClientFailed(error), _) => (backend_of(error), "client-failed", "-", "-"),
            (Fate::Failed(Error::Rejected(reason)), _) => ("-", "rejected", reason.as_str(), "-"),
            (Fate::Failed(error), _) => (backend_of(error), "failed", "-", "-"),
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
        request.write(response.status().as_u16(), fields);
    }
}

/// The backend an error names, `-` for none.
fn backend_of(error: &Error) -> &str {
    match error {
        Error::Backend { backend, .. } => backend.as_str(),
        Error::Rejected(_) => "-",
    }
}

impl Drop for Access {
    fn drop(&mut self) {
        if let Some(request) = self.request.take() {
            request.write(499, ("-", "aborted", "-", "-"));
        }
    }
}

impl Request {
    fn write(self, status: u16, (backend, outcome, reason, source): Fields<'_>) {
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: "access",
            client = %self.client,
            method = %self.method,
            uri = %Escaped(target(&self.uri)),
            status,
            backend = %Escaped(backend),
            outcome = %outcome,
            reason = %reason,
            source = %source,
            ms = %format_args!("{ms:.2}"),
        );
    }
}

/// The target as an origin-form request line has it: path and query, from
/// an absolute-form target or an HTTP/2 request's URI too; an
/// authority-form one (CONNECT) as it came.
fn target(uri: &Uri) -> &str {
    match uri.path_and_query() {
        Some(path) => path.as_str(),
        None => uri.authority().map_or("-", |a| a.as_str()),
    }
}

/// Text written with every byte outside printable ASCII, and `\`, as
/// `\xHH`, as nginx writes its log.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if !b.is_ascii_graphic() || b == b'\\' {
                // Bytes start..i are printable ASCII: whole characters,
                // with character boundaries at both ends.
                if start < i {
                    f.write_str(&self.0[start..i])?;
                }
                write!(f, "\\x{b:02X}")?;
                start = i + 1;
            }
        }
        if start < bytes.len() {
            f.write_str(&self.0[start..])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_cannot_be_split_or_forged() {
        let shown = |text: &str| Escaped(text).to_string();
        assert_eq!(shown("/cart?item=7&x=%20"), "/cart?item=7&x=%20");
        assert_eq!(shown("/x\u{2028}y"), "/x\\xE2\\x80\\xA8y");
        assert_eq!(shown("/a\\b c\u{85}"), "/a\\x5Cb\\x20c\\xC2\\x85");
        assert_eq!(shown("é"), "\\xC3\\xA9");
        assert_eq!(shown(""), "");
    }

    #[test]
    fn the_target_is_the_path_and_query_whatever_its_form() {
        let uri = |text: &str| text.parse::<Uri>().unwrap();
        assert_eq!(target(&uri("/cart?item=7")), "/cart?item=7");
        assert_eq!(
            target(&uri("http://example.com:8080/cart?item=7")),
            "/cart?item=7"
        );
        assert_eq!(target(&uri("http://example.com")), "/");
        assert_eq!(target(&uri("example.com:443")), "example.com:443");
    }
}
