//! Waits on a peer that has stopped moving: a client that no longer sends
//! its request body or reads its response, a backend that no longer reads
//! a request body. The timeouts count from when such a wait started.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Since when a wait on a peer has been under way, if one is.
pub struct Stall {
    base: Instant,
    /// Nanoseconds from `base` to the wait's start, plus one; 0: no wait.
    started: AtomicU64,
}

impl Stall {
    /// No wait under way.
    pub fn new() -> Stall {
        Stall {
            base: Instant::now(),
            started: AtomicU64::new(0),
        }
    }

    /// A wait on the peer starts, unless one is under way.
    pub fn start(&self) {
        if self.started.load(Ordering::Relaxed) == 0 {
            let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.started.store(now.saturating_add(1), Ordering::Relaxed);
        }
    }

    /// The peer moved: no wait.
    pub fn end(&self) {
        if self.started.load(Ordering::Relaxed) != 0 {
            self.started.store(0, Ordering::Relaxed);
        }
    }

    /// When the wait under way started.
    pub fn since(&self) -> Option<Instant> {
        match self.started.load(Ordering::Relaxed) {
            0 => None,
            started => Some(self.base + Duration::from_nanos(started - 1)),
        }
    }
}

/// A socket whose writes are watched: one that has to wait for room
/// starts a [`Stall`], and one that goes through ends it. Reads pass
/// through.
pub struct Watched<S> {
    stream: S,
    writing: Arc<Stall>,
}

impl<S> Watched<S> {
    /// Wraps `stream`, noting its writes in `writing`.
    pub fn new(stream: S, writing: Arc<Stall>) -> Watched<S> {
        Watched { stream, writing }
    }

    fn wrote<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => self.writing.start(),
            Poll::Ready(_) => self.writing.end(),
        }
        poll
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_keeps_its_first_start_until_it_ends() {
        let stall = Stall::new();
        assert_eq!(stall.since(), None);
        stall.start();
        let since = stall.since().expect("started");
        assert!(since >= stall.base && since <= Instant::now());
        std::thread::sleep(Duration::from_millis(2));
        stall.start();
        assert_eq!(stall.since(), Some(since), "still the first start");
        stall.end();
        assert_eq!(stall.since(), None);
        stall.start();
        assert!(stall.since().expect("started again") > since);
    }
}
