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
//!   `disabled`, `removed`, ...), or why hyper refused a head (below);
//! - `source`: where its key came from (`none` when the weights placed it);
//! - `ms`: the time from the request head to the response head (or to the
//!   end, for `aborted`), in milliseconds; `-` when hyper refused the head.
//!
//! An HTTP/1.1 request head so malformed that hyper answers it before the
//! gateway sees it has a line too, written as its connection ends (hyper
//! closes it after the answer), with `-` for what could not be read,
//! `refused` for its outcome and why in `reason`: `bad-request` (status
//! 400: a request line or header that is not HTTP, TLS sent to the plain
//! port, say), `head-too-large` (431: over hyper's limits, such as 100
//! headers or about 400 KiB in all) or `uri-too-long` (414: a target over
//! 65,534 bytes):
//!
//! ```text
//! INFO access: client=127.0.0.1:51236 method=- uri=- status=400 backend=- outcome=refused reason=bad-request source=- ms=-
//! ```
//!
//! An HTTP/2 request whose headers are over the `h2` crate's limit
//! (16 KiB) is answered 431 by that crate, out of the gateway's sight, and
//! has no line.
//!
//! The lines are written to standard error by a thread of their own
//! ([`Writer`]): every [`TICK`], all the lines queued since, in as few
//! writes as fit them, not one `write(2)` per request on the workers. So a
//! line may come up to a tick after another log line written at the same
//! time: sort by time stamp.
//! If that thread falls [`QUEUE`] lines behind (the log's reader has
//! stalled), further lines are dropped rather than hold requests up; they
//! are counted, with those a failed write lost ([`dropped`],
//! `sticky_gateway_access_lines_dropped_total`). At shutdown the gateway
//! waits up to [`FINISH`] for the lines still queued.

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use http::{Method, Response, Uri};
use tower_sticky::sticky_core::Outcome;
use tower_sticky::{Error, Placement};

/// How many lines may wait for the writer thread; past that, new lines
/// are dropped. About 30 MiB of lines at most.
pub const QUEUE: usize = 128 * 1024;

/// How often the writer thread takes the lines queued since it last did.
/// It sleeps in between rather than wait on the queue, so that a worker
/// that queues a line never has to wake it.
pub const TICK: Duration = Duration::from_millis(20);

/// How long the gateway waits at shutdown for the lines still queued.
pub const FINISH: Duration = Duration::from_secs(5);

/// The gateway's access log's count of lost lines, for [`dropped`].
static DROPPED: OnceLock<Arc<AtomicU64>> = OnceLock::new();

/// How many of the gateway's access lines were lost: dropped because its
/// writer fell [`QUEUE`] lines behind, or because writing them failed.
pub fn dropped() -> u64 {
    DROPPED
        .get()
        .map_or(0, |count| count.load(Ordering::Relaxed))
}

/// What the writer thread is sent: a line, or the word to finish.
enum Message {
    Line(Vec<u8>),
    Finish,
}

/// Hands each formatted line to the writer thread (a `MakeWriter` for
/// tracing's formatter: one [`Line`] per event).
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::SyncSender<Message>,
    /// Lines lost: the queue full, or their write failed.
    dropped: Arc<AtomicU64>,
}

/// The writer thread, to be finished at shutdown.
pub struct Finisher {
    queue: mpsc::SyncSender<Message>,
    finished: mpsc::Receiver<()>,
}

impl Writer {
    /// A writer whose thread writes to `out`, and what finishes it.
    pub fn start<W>(out: W) -> std::io::Result<(Writer, Finisher)>
    where
        W: std::io::Write + Send + 'static,
    {
        Self::start_queueing(out, QUEUE)
    }

    /// As [`start`](Self::start), with room for `queue` lines.
    fn start_queueing<W>(out: W, queue: usize) -> std::io::Result<(Writer, Finisher)>
    where
        W: std::io::Write + Send + 'static,
    {
        let (queue, lines) = mpsc::sync_channel(queue);
        let (done, finished) = mpsc::channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&dropped);
        std::thread::Builder::new()
            .name("gateway-access-log".into())
            .spawn(move || {
                write_lines(lines, out, &counted);
                let _ = done.send(());
            })?;
        let finisher = Finisher {
            queue: queue.clone(),
            finished,
        };
        Ok((Writer { queue, dropped }, finisher))
    }

    /// Makes this writer's count of lost lines the one [`dropped`] reads.
    pub fn count_for_metrics(&self) {
        let _ = DROPPED.set(Arc::clone(&self.dropped));
    }
}

/// Writes the lines it receives to `out`: every [`TICK`], all that have
/// come, through one buffer, then flushed; until told to finish (or no
/// sender is left). Lines lost to a failed write are counted as dropped.
fn write_lines<W>(lines: mpsc::Receiver<Message>, out: W, dropped: &AtomicU64)
where
    W: std::io::Write,
{
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        // Lines in the buffer since it was last flushed, lost with it if
        // a write fails.
        let mut buffered = 0;
        let mut finish = false;
        loop {
            match lines.try_recv() {
                Ok(Message::Line(line)) => {
                    buffered += 1;
                    if out.write_all(&line).is_err() {
                        dropped.fetch_add(buffered, Ordering::Relaxed);
                        buffered = 0;
                        // Start over with an empty buffer.
                        let (inner, _) = out.into_parts();
                        out = std::io::BufWriter::with_capacity(64 * 1024, inner);
                    }
                }
                Ok(Message::Finish) | Err(mpsc::TryRecvError::Disconnected) => {
                    finish = true;
                    break;
                }
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        if out.flush().is_err() {
            dropped.fetch_add(buffered, Ordering::Relaxed);
            let (inner, _) = out.into_parts();
            out = std::io::BufWriter::with_capacity(64 * 1024, inner);
        }
        if finish {
            return;
        }
        std::thread::sleep(TICK);
    }
}

impl Finisher {
    /// Waits, up to `within`, for the lines queued so far to be written;
    /// false if they were not.
    pub fn finish(self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut message = Message::Finish;
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Full(returned)) if Instant::now() < deadline => {
                    message = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return true,
                Err(_) => return false,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.finished.recv_timeout(left).is_ok()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Writer {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            text: Vec::with_capacity(256),
            to: self,
        }
    }
}

/// One event's line, sent to the writer thread when the formatter is done
/// with it.
pub struct Line<'a> {
    text: Vec<u8>,
    to: &'a Writer,
}

impl std::io::Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let line = Message::Line(std::mem::take(&mut self.text));
        if self.to.queue.try_send(line).is_err() {
            self.to.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
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
    /// Its client broke its upload off: the line names the backend the
    /// upload was going to, and blames the client.
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

/// Logs the line of a request that hyper answered itself, before the
/// gateway saw it, if `error` (what ended `client`'s connection) says it
/// did. Its method and target are `-`: they could not be read.
pub fn unparsed(client: SocketAddr, error: &(dyn std::error::Error + 'static)) {
    let Some((status, reason)) = answered_by_hyper(error) else {
        return;
    };
    tracing::info!(
        target: "access",
        client = %client,
        method = %"-",
        uri = %"-",
        status,
        backend = %"-",
        outcome = %"refused",
        reason = %reason,
        source = %"-",
        ms = %"-",
    );
}

/// The status and reason of the answer hyper's HTTP/1.1 server writes
/// itself for a request head it cannot parse (as its `on_error` does),
/// when `error` is such a failure; `None` for any other end of a
/// connection, which gets no answer.
fn answered_by_hyper(error: &(dyn std::error::Error + 'static)) -> Option<(u16, &'static str)> {
    let error = error.downcast_ref::<hyper::Error>()?;
    // An HTTP/2 preface on an HTTP/1.1 connection, and a bad status line,
    // are not a client's request that hyper answers. hyper's own internal
    // parse failure gets no answer either, but its public API does not
    // tell it apart: it would show as a 400 line. It is a fault in hyper,
    // not in a request, so that is left.
    if !error.is_parse() || error.is_parse_version_h2() || error.is_parse_status() {
        return None;
    }
    if error.is_parse_too_large() {
        // hyper tells a target too long from a head too large only in its
        // message.
        return Some(if error.to_string().starts_with("URI too long") {
            (414, "uri-too-long")
        } else {
            (431, "head-too-large")
        });
    }
    Some((400, "bad-request"))
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
    use std::sync::Mutex;
    use tracing_subscriber::fmt::MakeWriter as _;

    /// An output that records each write, and holds the first one until
    /// released: lines queue up behind it meanwhile.
    #[derive(Clone)]
    struct Held {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        entered: mpsc::SyncSender<()>,
        release: Arc<Mutex<mpsc::Receiver<()>>>,
    }

    impl Held {
        /// The output, word of its first write, and its release.
        fn new() -> (Held, mpsc::Receiver<()>, mpsc::Sender<()>) {
            let (entered, first) = mpsc::sync_channel(1);
            let (release, released) = mpsc::channel();
            let held = Held {
                writes: Arc::default(),
                entered,
                release: Arc::new(Mutex::new(released)),
            };
            (held, first, release)
        }
    }

    impl std::io::Write for Held {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let mut writes = self.writes.lock().unwrap();
            if writes.is_empty() {
                let _ = self.entered.try_send(());
                let _ = self.release.lock().unwrap().recv();
            }
            writes.push(bytes.to_vec());
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn send(writer: &Writer, line: &str) {
        let mut out = writer.make_writer();
        out.write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn lines_queued_behind_a_slow_write_go_out_together_and_in_order() {
        let (held, first, release) = Held::new();
        let writes = Arc::clone(&held.writes);
        let (writer, finisher) = Writer::start_queueing(held, 100).unwrap();
        send(&writer, "line 0\n");
        first.recv().unwrap();
        for i in 1..50 {
            send(&writer, &format!("line {i}\n"));
        }
        // Shutdown waits for them, though the output is still held.
        let finishing = std::thread::spawn(move || finisher.finish(Duration::from_secs(60)));
        release.send(()).unwrap();
        assert!(finishing.join().unwrap(), "all written in time");
        let writes = writes.lock().unwrap();
        let text: Vec<u8> = writes.concat();
        let wanted: String = (0..50).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(text).unwrap(), wanted);
        assert!(writes.len() <= 3, "{} writes for 50 lines", writes.len());
        assert_eq!(writer.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn lines_past_the_queue_and_lines_a_failed_write_lost_are_counted() {
        let (held, first, release) = Held::new();
        let (writer, finisher) = Writer::start_queueing(held, 2).unwrap();
        send(&writer, "in the write\n");
        first.recv().unwrap();
        for line in ["queued 1\n", "queued 2\n", "dropped 1\n", "dropped 2\n"] {
            send(&writer, line);
        }
        assert_eq!(writer.dropped.load(Ordering::Relaxed), 2);
        release.send(()).unwrap();
        assert!(finisher.finish(Duration::from_secs(60)));

        // An output that refuses every write: each line lost, counted.
        struct Closed;
        impl std::io::Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
        }
        let (writer, finisher) = Writer::start_queueing(Closed, 100).unwrap();
        for i in 0..10 {
            send(&writer, &format!("line {i}\n"));
        }
        assert!(finisher.finish(Duration::from_secs(60)));
        assert_eq!(writer.dropped.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn shutdown_waits_for_the_queue_no_longer_than_it_may() {
        let (held, first, release) = Held::new();
        let (writer, finisher) = Writer::start_queueing(held, 10).unwrap();
        send(&writer, "held\n");
        first.recv().unwrap();
        assert!(!finisher.finish(Duration::from_millis(10)), "still held");
        release.send(()).unwrap();
    }

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
