//! The client timeout: how long a client connection may stay open with no
//! request in progress.
//!
//! A connection is idle from its start, and from the end of each response,
//! until the head of its next request is in. The worker closes a connection
//! idle for longer than the client timeout: one that sent nothing, or part
//! of a request head (or of HTTP/2's preface), or nothing more after its
//! last answer. This holds for HTTP/1.1 and HTTP/2 alike; an HTTP/2
//! connection is idle while it has no request open. While a request is in
//! progress the client timeout does not count: a slow upload or a long
//! response is not idleness, and a backend slow to answer is the backend
//! timeout's business.
//!
//! hyper's own header timer is not used: it starts only once hyper has
//! told HTTP/1.1 from HTTP/2, so it would miss a client that sends nothing,
//! it does not cover HTTP/2, and it costs a timer set and cleared for every
//! request. Here a request costs a few atomic operations (a count up and
//! down, a reference taken and dropped) and a clock read, and a connection
//! has one timer, moved on only when it fires early.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// What a client connection is doing: how many of its requests are in
/// progress, and since when it has had none.
pub struct Activity {
    opened: Instant,
    in_progress: AtomicUsize,
    /// Nanoseconds from `opened` to the end of the last response.
    idle_since: AtomicU64,
}

impl Activity {
    /// A connection opened now, idle until its first request.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_progress: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
        })
    }

    /// Marks a request, whose head is in, as in progress until the guard
    /// is dropped (with its response's body, see [`Tracked`]).
    pub fn begin(self: &Arc<Self>) -> InProgress {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        InProgress(Arc::clone(self))
    }

    /// When the connection will have been idle for `timeout`; `None` while
    /// a request is in progress.
    pub fn idle_until(&self, timeout: Duration) -> Option<Instant> {
        if self.in_progress.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle_since = Duration::from_nanos(self.idle_since.load(Ordering::Relaxed));
        Some(self.opened + idle_since + timeout)
    }
}

/// A request in progress; dropping it ends the request.
pub struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        let activity = &self.0;
        let since_opened = activity.opened.elapsed().as_nanos();
        let since_opened = u64::try_from(since_opened).unwrap_or(u64::MAX);
        activity
            .idle_since
            .fetch_max(since_opened, Ordering::Relaxed);
        activity.in_progress.fetch_sub(1, Ordering::Release);
    }
}

/// A response body that keeps its request in progress until it is done
/// with (hyper drops it once it has taken the last part, or when the
/// client goes away).
pub struct Tracked<B> {
    body: B,
    _request: InProgress,
}

impl<B> Tracked<B> {
    /// `body`, ending `request` when dropped.
    pub fn new(body: B, request: InProgress) -> Tracked<B> {
        Tracked {
            body,
            _request: request,
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
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's client timeout, polled by the task that drives the
/// connection.
pub struct IdleTimer {
    activity: Arc<Activity>,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// Whether `timer` holds the task's waker and a deadline to look at
    /// `activity` again.
    armed: bool,
}

impl IdleTimer {
    /// Times the connection whose requests `activity` follows.
    pub fn new(activity: Arc<Activity>, timeout: Duration) -> IdleTimer {
        let first = activity.opened + timeout;
        IdleTimer {
            activity,
            timeout,
            timer: Box::pin(tokio::time::sleep_until(first)),
            armed: false,
        }
    }

    /// Ready once the connection has been idle for the timeout. Between
    /// firings of the timer this is a single check, so the task may call
    /// it each time it is woken.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // An armed timer wakes this task when it fires; the task's waker
        // does not change, so there is nothing to do before then.
        if self.armed && !self.timer.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            let now = Instant::now();
            let deadline = match self.activity.idle_until(self.timeout) {
                Some(deadline) if deadline <= now => return Poll::Ready(()),
                Some(deadline) => deadline,
                // Busy: look again a timeout from now.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn a_new_connection_is_idle_from_its_start() {
        let activity = Activity::new();
        assert_eq!(
            activity.idle_until(TIMEOUT),
            Some(activity.opened + TIMEOUT)
        );
    }

    #[test]
    fn the_timeout_stops_while_any_request_is_in_progress() {
        let activity = Activity::new();
        let first = activity.begin();
        let second = activity.begin();
        assert_eq!(activity.idle_until(TIMEOUT), None);
        drop(first);
        assert_eq!(activity.idle_until(TIMEOUT), None, "one still open");
        std::thread::sleep(Duration::from_millis(5));
        drop(second);
        let until = activity.idle_until(TIMEOUT).expect("idle again");
        assert!(until >= activity.opened + Duration::from_millis(5) + TIMEOUT);
        assert!(until <= Instant::now() + TIMEOUT);
    }

    #[test]
    fn a_response_body_ends_its_request_when_dropped() {
        let activity = Activity::new();
        let body = Tracked::new(String::from("answer"), activity.begin());
        assert_eq!(body.size_hint().exact(), Some(6));
        assert_eq!(activity.idle_until(TIMEOUT), None);
        drop(body);
        assert!(activity.idle_until(TIMEOUT).is_some());
    }
}
