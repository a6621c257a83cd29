//! The client timeout: how long a client connection may stay open with no
//! request in progress, or with a request stuck on the client: its body no
//! longer coming, or its response no longer read.
//!
//! A connection is idle from its start, and from the end of each response,
//! until the head of its next request is in. The gateway closes a connection
//! idle for longer than the client timeout: one that sent nothing, or part
//! of a request head (or of HTTP/2's preface), or nothing more after its
//! last answer. This holds for HTTP/1.1 and HTTP/2 alike; an HTTP/2
//! connection is idle while it has no request open. While a request is in
//! progress, being idle does not count: a slow upload or a long response
//! is not idleness, and a backend slow to answer is the backend timeout's
//! business. What does count is a client that keeps the gateway waiting
//! for the timeout: for more of a request body that has stopped coming, or
//! for room to write a response it has stopped reading. Its connection is
//! closed too, so that such a client cannot hold the request, and the
//! backend connection behind it, for ever. A slow client that keeps
//! sending or reading something is served to the end.
//!
//! An HTTP/2 client can also stop a response by granting it no more
//! flow-control window, while it reads its socket. So each HTTP/2 stream
//! notes when it waits on the client: from when hyper takes a part of its
//! response until hyper asks for more (which it does once the window has
//! room), and while its request body has nothing more. A connection
//! carries many streams, some perhaps held back by the client on purpose
//! while others go on (a proxy in front may carry many users' requests on
//! one connection), so it counts as waiting on the client only while every
//! stream in progress does; and since hyper offers no way to cancel a
//! single stream, the whole connection is what is closed.
//!
//! An idle connection is closed politely: HTTP/1.1 at once; HTTP/2 with a
//! GOAWAY first, which tells the client to take its next request to a new
//! connection, and with one more timeout for the client to acknowledge it
//! (the connection closes as soon as the client has). A stalled connection
//! is dropped.
//!
//! hyper's own header timer is not used: it starts only once hyper has
//! told HTTP/1.1 from HTTP/2, so it would miss a client that sends nothing,
//! it does not cover HTTP/2, and it costs a timer set and cleared for every
//! request. Here a request costs a few atomic operations (a count up and
//! down, a reference taken and dropped) and a clock read, a write or a
//! part of a request body an atomic load, and a connection has one timer,
//! moved on only when it fires early. An HTTP/2 request also allocates its
//! stream's record, and each part of its response costs a few atomic
//! operations and a clock read more.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::watch::Receiver;
use tokio::time::{Instant, Sleep};

use crate::stall::Stall;

/// What a client connection is doing: how many of its requests are in
/// progress, since when it has had none, and since when the gateway has
/// been waiting on the client, if it is.
pub struct Activity {
    opened: Instant,
    in_progress: AtomicUsize,
    /// Nanoseconds from `opened` to the end of the last response.
    idle_since: AtomicU64,
    /// Since when a write to the client has been waiting for room (noted
    /// by the socket, see [`crate::stall::Watched`]).
    writing: Arc<Stall>,
    /// Since when a request body has been waiting for more from the client
    /// (HTTP/1.1).
    uploading: Stall,
    /// How many HTTP/2 streams in progress are waiting on the client.
    streams_waiting: AtomicUsize,
    /// Since when every HTTP/2 stream in progress has been waiting on the
    /// client.
    all_streams_waiting: Stall,
}

impl Activity {
    /// A connection opened now, idle until its first request.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_progress: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            writing: Arc::new(Stall::new()),
            uploading: Stall::new(),
            streams_waiting: AtomicUsize::new(0),
            all_streams_waiting: Stall::new(),
        })
    }

    /// Where the client's socket notes its writes' waits.
    pub fn writing(&self) -> Arc<Stall> {
        Arc::clone(&self.writing)
    }

    /// Marks `request`, whose head is in, as in progress until the body
    /// of its response is done with (see [`Started::track`]). Returns it
    /// started and, if it has a body, the [`Upload`] for whoever reads it.
    pub fn start<B: Body>(
        self: &Arc<Self>,
        request: &http::Request<B>,
    ) -> (Started, Option<Upload>) {
        let in_progress = self.begin();
        let stream = (request.version() == http::Version::HTTP_2).then(|| Stream::new(self));
        let upload = (!request.body().is_end_stream()).then(|| Upload::new(self, stream.as_ref()));
        (
            Started {
                in_progress,
                stream,
            },
            upload,
        )
    }

    /// Marks a request, whose head is in, as in progress until the guard
    /// is dropped (with its response's body, see [`Tracked`]).
    fn begin(self: &Arc<Self>) -> InProgress {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        // A new stream is not waiting on the client.
        self.all_streams_waiting.end();
        InProgress(Arc::clone(self))
    }

    /// When the connection's client timeout runs out: `timeout` after it
    /// went idle or, with a request in progress, after the gateway started
    /// waiting on the client; `None` while neither.
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_progress.load(Ordering::Acquire) > 0 {
            return self.stalled_until(timeout);
        }
        let idle_since = Duration::from_nanos(self.idle_since.load(Ordering::Relaxed));
        Some(self.opened + idle_since + timeout)
    }

    /// Whether no request is in progress.
    fn is_idle(&self) -> bool {
        self.in_progress.load(Ordering::Acquire) == 0
    }

    /// Counts the connection as idle from now, if it is idle, and from
    /// the end of its last request otherwise.
    fn idle_from_now(&self) {
        let since_opened = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.idle_since.fetch_max(since_opened, Ordering::Relaxed);
    }

    /// Notes whether every HTTP/2 stream in progress now waits on the
    /// client.
    fn count_streams(&self) {
        let waiting = self.streams_waiting.load(Ordering::Relaxed);
        if waiting > 0 && waiting >= self.in_progress.load(Ordering::Relaxed) {
            self.all_streams_waiting.start();
        }
    }

    /// When a wait on the client runs out of `timeout`.
    fn stalled_until(&self, timeout: Duration) -> Option<Instant> {
        let waits = [
            self.writing.since(),
            self.uploading.since(),
            self.all_streams_waiting.since(),
        ];
        let since = waits.into_iter().flatten().min()?;
        Some(since + timeout)
    }
}

/// A request in progress, from [`Activity::start`].
pub struct Started {
    in_progress: InProgress,
    /// The HTTP/2 stream it came on, if it did.
    stream: Option<Arc<Stream>>,
}

impl Started {
    /// The response's `body`, keeping the request in progress until it is
    /// done with.
    pub fn track<B>(self, body: B) -> Tracked<B> {
        Tracked::new(body, self.in_progress, self.stream)
    }
}

/// A request in progress; dropping it ends the request.
pub struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.idle_from_now();
        self.0.in_progress.fetch_sub(1, Ordering::Release);
        // The streams left may all be waiting.
        self.0.count_streams();
    }
}

/// An HTTP/2 stream's waits on the client: for more of its request body,
/// or for flow-control window to send more of its response. A connection
/// carries many streams, some perhaps paused by the client on purpose, so
/// it counts as waiting on the client only while every stream in progress
/// does.
pub struct Stream {
    activity: Arc<Activity>,
    /// Which of [`UPLOAD`] and [`RESPONSE`] are waiting.
    waits: AtomicU8,
}

const UPLOAD: u8 = 1;
const RESPONSE: u8 = 2;

impl Stream {
    /// A stream on the connection `activity` follows, waiting on nothing.
    fn new(activity: &Arc<Activity>) -> Arc<Stream> {
        Arc::new(Stream {
            activity: Arc::clone(activity),
            waits: AtomicU8::new(0),
        })
    }

    fn wait(&self, what: u8) {
        if self.waits.fetch_or(what, Ordering::Relaxed) == 0 {
            self.activity
                .streams_waiting
                .fetch_add(1, Ordering::Relaxed);
            self.activity.count_streams();
        }
    }

    fn moved(&self, what: u8) {
        if self.waits.fetch_and(!what, Ordering::Relaxed) == what {
            self.activity
                .streams_waiting
                .fetch_sub(1, Ordering::Relaxed);
            self.activity.all_streams_waiting.end();
        }
    }
}

/// A response body that keeps its request in progress until it is done
/// with (hyper drops it once it has taken the last part, or when the
/// client goes away). On HTTP/2 it also notes its stream waiting on the
/// client from when hyper takes a part of it until hyper comes back for
/// more, which it does once the client's flow-control window has room.
pub struct Tracked<B> {
    body: B,
    /// The HTTP/2 stream, and whether a part was taken and no more asked.
    stream: Option<Arc<Stream>>,
    handed: bool,
    _request: InProgress,
}

impl<B> Tracked<B> {
    /// `body`, ending `request` when dropped; `stream` for HTTP/2.
    fn new(body: B, request: InProgress, stream: Option<Arc<Stream>>) -> Tracked<B> {
        Tracked {
            body,
            stream,
            handed: false,
            _request: request,
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        if let (Some(stream), true) = (&self.stream, self.handed) {
            stream.moved(RESPONSE);
        }
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let Some(stream) = &this.stream else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        if this.handed {
            this.handed = false;
            stream.moved(RESPONSE);
        }
        let poll = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll {
            if frame.is_data() {
                this.handed = true;
                stream.wait(RESPONSE);
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body on its way in, for the client timeout: whoever reads
/// the body says when it has to wait for more and when more came. Carried
/// to the reader in the request's extensions.
#[derive(Clone)]
pub struct Upload(Uploader);

#[derive(Clone)]
enum Uploader {
    Connection(Arc<Activity>),
    Stream(Arc<Stream>),
}

impl Upload {
    /// The body of a request on the connection `activity` follows, or on
    /// its HTTP/2 stream `stream`.
    fn new(activity: &Arc<Activity>, stream: Option<&Arc<Stream>>) -> Upload {
        Upload(match stream {
            Some(stream) => Uploader::Stream(Arc::clone(stream)),
            None => Uploader::Connection(Arc::clone(activity)),
        })
    }

    /// The body has nothing more yet: a wait on the client starts, if none
    /// is under way.
    pub fn waiting(&self) {
        match &self.0 {
            Uploader::Connection(activity) => activity.uploading.start(),
            Uploader::Stream(stream) => stream.wait(UPLOAD),
        }
    }

    /// Some of the body came, or its end.
    pub fn got(&self) {
        match &self.0 {
            Uploader::Connection(activity) => activity.uploading.end(),
            Uploader::Stream(stream) => stream.moved(UPLOAD),
        }
    }
}

/// A body no longer read is not waited for.
impl Drop for Upload {
    fn drop(&mut self) {
        self.got();
    }
}

/// A request body that tells the client timeout, through its [`Upload`],
/// when its reader has to wait for more of it from the client.
pub struct Uploading<B> {
    body: B,
    upload: Option<Upload>,
}

impl<B> Uploading<B> {
    /// `body`, followed by `upload` (`None` for a body with nothing to
    /// come).
    pub fn new(body: B, upload: Option<Upload>) -> Uploading<B> {
        Uploading { body, upload }
    }

    /// The body and its upload, taken apart again.
    pub fn into_parts(self) -> (B, Option<Upload>) {
        (self.body, self.upload)
    }
}

impl<B> Body for Uploading<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let poll = Pin::new(&mut self.body).poll_frame(cx);
        if let Some(upload) = &self.upload {
            match poll {
                Poll::Pending => upload.waiting(),
                Poll::Ready(_) => upload.got(),
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Why a connection's client timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No request was in progress for the timeout.
    Idle,
    /// A request was in progress, and the gateway had been waiting on the
    /// client for the timeout.
    Stalled,
}

/// A connection's client timeout, polled by the task that drives the
/// connection.
pub struct ClientTimer {
    activity: Arc<Activity>,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// Whether `timer` holds the task's waker and a deadline to look at
    /// `activity` again.
    armed: bool,
}

impl ClientTimer {
    /// Times the connection that `activity` follows.
    pub fn new(activity: Arc<Activity>, timeout: Duration) -> ClientTimer {
        let first = activity.opened + timeout;
        ClientTimer {
            activity,
            timeout,
            timer: Box::pin(tokio::time::sleep_until(first)),
            armed: false,
        }
    }

    /// Ready once the connection's client timeout has run out, saying
    /// why. Between firings of the timer this is a single check, so the
    /// task may call it each time it is woken.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        // An armed timer wakes this task when it fires; the task's waker
        // does not change, so there is nothing to do before then. Nothing
        // can bring the deadline forward: whatever happens after the timer
        // is armed (a request ending, a wait on the client starting) runs
        // a full timeout from then.
        if self.armed && !self.timer.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            let now = Instant::now();
            let deadline = match self.activity.deadline(self.timeout) {
                Some(deadline) if deadline <= now => {
                    let why = if self.activity.is_idle() {
                        Expired::Idle
                    } else {
                        Expired::Stalled
                    };
                    return Poll::Ready(why);
                }
                Some(deadline) => deadline,
                // Busy, and not waiting on the client: look again a
                // timeout from now.
                None => now + self.timeout,
            };
            if deadline != self.timer.deadline() {
                self.timer.as_mut().reset(deadline);
            }
            // Outside the task's budget: a poll turned away by it would
            // leave the timer without the waker.
            let poll = std::pin::pin!(tokio::task::unconstrained(self.timer.as_mut())).poll(cx);
            if poll.is_pending() {
                self.armed = true;
                return Poll::Pending;
            }
        }
    }

    /// Gives an idle connection a further timeout from now, as if its last
    /// request had just ended: time to close it politely.
    pub fn start_over(&mut self) {
        self.activity.idle_from_now();
    }
}

/// A connection that can be asked to close politely: finish what is
/// under way, take nothing new.
pub trait Graceful: Future<Output = Result<(), tower_sticky::BoxError>> {
    /// Starts closing politely; the future still has to be polled to its end.
    fn graceful_shutdown(self: Pin<&mut Self>);

    /// Whether closing politely takes the client's part: an HTTP/2
    /// connection's GOAWAY is answered. An HTTP/1.1 connection with no
    /// request in progress has nothing to finish.
    fn multiplexed(&self) -> bool;
}

/// Serves `connection` to its end under the client timeout that `timer`
/// keeps, and closes it politely once `stop` turns true (the gateway
/// shutting down): HTTP/1.1 once its response is out (at once when idle),
/// HTTP/2 with a GOAWAY, once its streams are done. An idle HTTP/2
/// connection is closed politely too, with one more timeout to do it; an
/// idle HTTP/1.1 one (perhaps part way through a request head, which
/// hyper would wait on) at once, as is a stalled one, or one idle again
/// while closing. `stop` is held until the
/// connection ends, so that shutdown can wait for every receiver to go.
/// Returns the error that ended the connection, if one did.
pub async fn drive<C>(
    connection: C,
    mut timer: ClientTimer,
    mut stop: Receiver<bool>,
) -> Option<tower_sticky::BoxError>
where
    C: Graceful,
{
    let mut connection = std::pin::pin!(connection);
    let mut stopping = std::pin::pin!(stop.wait_for(|&stopped| stopped));
    let mut closing = false;
    let ended = std::future::poll_fn(|cx| loop {
        if let Poll::Ready(ended) = connection.as_mut().poll(cx) {
            return Poll::Ready(Some(ended));
        }
        // Shutting down: close politely.
        if !closing && stopping.as_mut().poll(cx).is_ready() {
            connection.as_mut().graceful_shutdown();
            closing = true;
            continue;
        }
        match std::task::ready!(timer.poll_expired(cx)) {
            // Idle over HTTP/2: close politely, with a further timeout to
            // do it.
            Expired::Idle if !closing && connection.multiplexed() => {
                connection.as_mut().graceful_shutdown();
                closing = true;
                timer.start_over();
            }
            // Idle over HTTP/1.1, stalled, or idle again while closing
            // politely: drop it.
            Expired::Idle | Expired::Stalled => return Poll::Ready(None),
        }
    })
    .await;
    match ended {
        None => tracing::debug!("client connection idle or stalled too long; closed"),
        Some(Err(error)) => {
            tracing::debug!(%error, "client connection ended");
            return Some(error);
        }
        Some(Ok(())) => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn a_new_connection_is_idle_from_its_start() {
        let activity = Activity::new();
        assert_eq!(activity.deadline(TIMEOUT), Some(activity.opened + TIMEOUT));
    }

    #[test]
    fn the_timeout_stops_while_any_request_is_in_progress() {
        let activity = Activity::new();
        let first = activity.begin();
        let second = activity.begin();
        assert_eq!(activity.deadline(TIMEOUT), None);
        drop(first);
        assert_eq!(activity.deadline(TIMEOUT), None, "one still open");
        std::thread::sleep(Duration::from_millis(5));
        drop(second);
        let until = activity.deadline(TIMEOUT).expect("idle again");
        assert!(until >= activity.opened + Duration::from_millis(5) + TIMEOUT);
        assert!(until <= Instant::now() + TIMEOUT);
    }

    #[test]
    fn an_idle_connection_can_be_given_a_further_timeout() {
        let activity = Activity::new();
        assert!(activity.is_idle());
        std::thread::sleep(Duration::from_millis(5));
        activity.idle_from_now();
        let until = activity.deadline(TIMEOUT).expect("idle");
        assert!(until >= activity.opened + Duration::from_millis(5) + TIMEOUT);
        let request = activity.begin();
        assert!(!activity.is_idle());
        drop(request);
        assert!(activity.is_idle());
    }

    #[test]
    fn a_client_that_stops_taking_its_response_is_timed_from_then() {
        let activity = Activity::new();
        let request = activity.begin();
        std::thread::sleep(Duration::from_millis(5));
        activity.writing.start();
        let until = activity.deadline(TIMEOUT).expect("stalled");
        assert!(until >= activity.opened + Duration::from_millis(5) + TIMEOUT);
        assert!(until <= Instant::now() + TIMEOUT);
        std::thread::sleep(Duration::from_millis(5));
        activity.writing.start();
        assert_eq!(activity.deadline(TIMEOUT), Some(until), "still the first");
        activity.writing.end();
        assert_eq!(activity.deadline(TIMEOUT), None, "taking it again");
        drop(request);
        assert!(activity.deadline(TIMEOUT).is_some(), "idle");
    }

    #[test]
    fn an_upload_that_stops_coming_is_timed_from_then_until_more_comes() {
        let activity = Activity::new();
        let request = activity.begin();
        let upload = Upload::new(&activity, None);
        upload.waiting();
        let until = activity.deadline(TIMEOUT).expect("waiting for the body");
        assert!(until <= Instant::now() + TIMEOUT);
        // A write stalling later does not move it on.
        std::thread::sleep(Duration::from_millis(5));
        activity.writing.start();
        assert_eq!(activity.deadline(TIMEOUT), Some(until));
        activity.writing.end();
        upload.got();
        assert_eq!(activity.deadline(TIMEOUT), None, "more came");
        upload.waiting();
        drop(upload);
        assert_eq!(activity.deadline(TIMEOUT), None, "the body is gone");
        drop(request);
    }

    #[test]
    fn http2_streams_keep_the_gateway_waiting_only_all_together() {
        let activity = Activity::new();
        let (first, second) = (activity.begin(), activity.begin());
        let (one, two) = (Stream::new(&activity), Stream::new(&activity));
        one.wait(RESPONSE);
        assert_eq!(
            activity.deadline(TIMEOUT),
            None,
            "the second is not waiting"
        );
        two.wait(UPLOAD);
        let until = activity.deadline(TIMEOUT).expect("both waiting");
        std::thread::sleep(Duration::from_millis(5));
        two.wait(RESPONSE);
        two.moved(UPLOAD);
        assert_eq!(activity.deadline(TIMEOUT), Some(until), "still waiting");
        two.moved(RESPONSE);
        assert_eq!(activity.deadline(TIMEOUT), None, "the second moved");
        drop(second);
        let until = activity.deadline(TIMEOUT).expect("the first, alone, waits");
        assert!(until <= Instant::now() + TIMEOUT);
        let third = activity.begin();
        assert_eq!(activity.deadline(TIMEOUT), None, "a new stream");
        drop((first, third));
    }

    #[test]
    fn an_http2_response_waits_on_the_client_between_parts() {
        let activity = Activity::new();
        let stream = Stream::new(&activity);
        let body = Tracked::new(
            String::from("answer"),
            activity.begin(),
            Some(Arc::clone(&stream)),
        );
        let mut body = std::pin::pin!(body);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let part = body.as_mut().poll_frame(&mut cx);
        assert!(matches!(part, Poll::Ready(Some(Ok(_)))));
        assert!(activity.deadline(TIMEOUT).is_some(), "handed a part");
        let end = body.as_mut().poll_frame(&mut cx);
        assert!(matches!(end, Poll::Ready(None)));
        assert_eq!(activity.deadline(TIMEOUT), None, "asked for more");
    }

    #[test]
    fn a_response_body_ends_its_request_when_dropped() {
        let activity = Activity::new();
        let body = Tracked::new(String::from("answer"), activity.begin(), None);
        assert_eq!(body.size_hint().exact(), Some(6));
        assert_eq!(activity.deadline(TIMEOUT), None);
        drop(body);
        assert!(activity.deadline(TIMEOUT).is_some());
    }
}
