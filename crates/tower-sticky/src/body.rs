//! [`ResponseBody`]: a backend's response body, counted as in flight
//! until it is over.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use sticky_core::InFlight;

pin_project! {
    /// The response body of [`Sticky`](crate::Sticky): the backend's own,
    /// with the request counted as in flight on that backend until the
    /// body ends, fails or is dropped. So a stream (a gRPC server stream, a
    /// long download) counts as load on its backend for as long as it
    /// runs: in [`Counters::in_flight`](sticky_core::Counters::in_flight)
    /// and in the load bounds.
    ///
    /// It is an [`http_body::Body`] when the backend's body is one, and
    /// passes its frames, size hint and end through unchanged.
    #[derive(Debug, Default)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B> ResponseBody<B> {
    /// `inner`, counted nowhere: for answers made beside the layer (an
    /// error page, say) that share its response type.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            in_flight: None,
        }
    }

    pub(crate) fn counted(inner: B, in_flight: Option<InFlight>) -> Self {
        Self { inner, in_flight }
    }

    /// The backend's body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The backend's body; the request stops counting as in flight.
    pub fn into_inner(self) -> B {
        self.inner
    }

    /// Takes the guard that counts the request as in flight, for an
    /// exchange that goes on past the body: a `101 Switching Protocols`
    /// whose tunnel (a WebSocket) you run. Keep it for as long as the
    /// tunnel is open; the body then counts nothing.
    pub fn take_in_flight(&mut self) -> Option<InFlight> {
        self.in_flight.take()
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            // Ended or failed: no longer under way.
            this.in_flight.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
