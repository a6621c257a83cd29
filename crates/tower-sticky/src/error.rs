//! The error a [`Sticky`](crate::Sticky) service returns.

use std::fmt;

use sticky_core::{BackendId, Reason};

/// A boxed error from a backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request got no response.
#[derive(Debug)]
pub enum Error {
    /// Nothing was placed: the bound backend can't serve in strict mode, or
    /// no backend is available. Answer 503.
    Rejected(Reason),
    /// The chosen backend failed. Answer 502; 504 when the backend's own
    /// stack timed the request out (tower's `Timeout`); or 503 when it shed
    /// the request (tower's `LoadShed`), which does not count against the
    /// backend's health.
    Backend {
        /// The backend.
        backend: BackendId,
        /// Its error.
        source: BoxError,
    },
}

impl Error {
    /// The HTTP status a server should answer with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Error::Rejected(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            Error::Backend { source, .. } if shed(&**source) => {
                http::StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Backend { source, .. } if timed_out(&**source) => {
                http::StatusCode::GATEWAY_TIMEOUT
            }
            Error::Backend { .. } => http::StatusCode::BAD_GATEWAY,
        }
    }
}

/// With the `tonic` feature, the gRPC status for a `Sticky` transport's
/// error, as a tonic client's caller should see it: put
/// `.map_err(tonic::Status::from)` outside the layer.
///
/// - a request no server can take (strict mode, or none available):
///   `UNAVAILABLE`, which callers and retry policies treat as passing;
/// - a request the server's own stack shed (tower's `LoadShed`):
///   `RESOURCE_EXHAUSTED`, as tonic answers for it;
/// - any other failure of the chosen server: the status tonic itself
///   makes of that server's error (`UNAVAILABLE` for a refused
///   connection, a server's own status kept whole), `DEADLINE_EXCEEDED`
///   for tower's `Timeout`, else `UNKNOWN` naming the server.
///
/// Without it, tonic reads a rejection as `UNKNOWN`.
///
/// ```
/// use tonic::transport::Channel;
/// use tower::ServiceBuilder;
/// use tower_sticky::{Backends, StickyLayer};
///
/// fn transport(backends: Backends<Channel>) -> impl tonic::client::GrpcService<tonic::body::Body> {
///     ServiceBuilder::new()
///         .map_err(tonic::Status::from)
///         .layer(StickyLayer::new())
///         .service(backends)
/// }
/// ```
#[cfg(feature = "tonic")]
impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Rejected(_) => tonic::Status::unavailable(error.to_string()),
            Error::Backend { backend, source } if shed(&*source) => {
                tonic::Status::resource_exhausted(format!("backend {backend:?}: {source}"))
            }
            Error::Backend { backend, source } => match tonic::Status::try_from_error(source) {
                Ok(status) => status,
                Err(source) if timed_out(&*source) => {
                    tonic::Status::deadline_exceeded(format!("backend {backend:?}: {source}"))
                }
                Err(source) => {
                    tonic::Status::unknown(format!("backend {backend:?} failed: {source}"))
                }
            },
        }
    }
}

/// The first error of type `T` in `error`'s source chain, `error` included:
/// layers and a backend's own error type may wrap what the layer looks for.
pub(crate) fn in_chain<'e, T: std::error::Error + 'static>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Whether a backend's own stack gave up waiting for the backend (tower's
/// `Timeout`, or an I/O timeout).
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    in_chain::<tower::timeout::error::Elapsed>(error).is_some()
        || in_chain::<std::io::Error>(error)
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
}

/// Whether a backend's own stack shed the request as overloaded: the
/// backend is busy, not broken.
pub(crate) fn shed(error: &(dyn std::error::Error + 'static)) -> bool {
    in_chain::<tower::load_shed::error::Overloaded>(error).is_some()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Rejected(reason) => {
                write!(f, "no backend for this request: {}", reason.as_str())
            }
            Error::Backend { backend, .. } => write!(f, "backend {backend:?} failed"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Rejected(_) => None,
            Error::Backend { source, .. } => Some(&**source),
        }
    }
}

/// A request the backend gave back unsent, so the layer may retry it on
/// the next candidate: return it as the error of a backend service (boxed,
/// or as the `source()` of the service's own error type) when the
/// connection failed before anything was written.
pub struct Unsent<B> {
    request: std::sync::Mutex<Option<http::Request<B>>>,
    source: BoxError,
}

impl<B> Unsent<B> {
    /// Wraps the unsent `request` and the connection error.
    pub fn new(request: http::Request<B>, source: impl Into<BoxError>) -> Self {
        Self {
            request: std::sync::Mutex::new(Some(request)),
            source: source.into(),
        }
    }

    pub(crate) fn take(&self) -> Option<http::Request<B>> {
        self.request.lock().ok()?.take()
    }
}

impl<B> fmt::Debug for Unsent<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unsent")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl<B> fmt::Display for Unsent<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request not sent: {}", self.source)
    }
}

impl<B> std::error::Error for Unsent<B> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`ErrorsAsResponses`].
    pub struct ErrorsAsResponsesFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B> std::future::Future for ErrorsAsResponsesFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, Error>>,
    B: Default,
{
    type Output = Result<http::Response<B>, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let result = std::task::ready!(self.project().inner.poll(cx));
        std::task::Poll::Ready(Ok(result.unwrap_or_else(|error| {
            let mut response = http::Response::new(B::default());
            *response.status_mut() = error.status();
            if let Error::Rejected(reason) = error {
                response
                    .extensions_mut()
                    .insert(sticky_core::Outcome::Rejected(reason));
            }
            response
        })))
    }
}

/// Turns a [`Sticky`](crate::Sticky) service's errors into empty responses
/// with their [status](Error::status) (503 rejected, 502 backend failed,
/// 504 backend timed out), for servers such as axum that take only
/// infallible services. A rejected request's response carries its
/// [`Outcome`](sticky_core::Outcome) extension (`Rejected(reason)`). For a
/// body, or a response body type without `Default` (hyper's `Incoming`),
/// use axum's `HandleErrorLayer` with [`Error::status`] instead.
///
/// Made by [`Sticky::errors_as_responses`](crate::Sticky::errors_as_responses).
#[derive(Clone, Debug)]
pub struct ErrorsAsResponses<S> {
    inner: S,
}

impl<S> ErrorsAsResponses<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R, B> tower_service::Service<R> for ErrorsAsResponses<S>
where
    S: tower_service::Service<R, Response = http::Response<B>, Error = Error>,
    B: Default,
{
    type Response = http::Response<B>;
    type Error = std::convert::Infallible;
    type Future = ErrorsAsResponsesFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Sticky is always ready.
        match self.inner.poll_ready(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(_) => std::task::Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: R) -> Self::Future {
        ErrorsAsResponsesFuture {
            inner: self.inner.call(request),
        }
    }
}

#[cfg(all(test, feature = "tonic"))]
mod tests {
    use super::*;

    fn failed(source: impl Into<BoxError>) -> tonic::Status {
        tonic::Status::from(Error::Backend {
            backend: "s1".into(),
            source: source.into(),
        })
    }

    #[test]
    fn errors_become_the_grpc_status_a_caller_expects() {
        use tonic::Code;
        let rejected = tonic::Status::from(Error::Rejected(sticky_core::Reason::Disabled));
        assert_eq!(rejected.code(), Code::Unavailable);
        assert_eq!(
            failed(tower::load_shed::error::Overloaded::new()).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            failed(tower::timeout::error::Elapsed::new()).code(),
            Code::DeadlineExceeded
        );
        let own = failed(tonic::Status::permission_denied("no"));
        assert_eq!((own.code(), own.message()), (Code::PermissionDenied, "no"));
        let other = failed(std::io::Error::other("boom"));
        assert_eq!(other.code(), Code::Unknown);
        assert!(
            other.message().contains("\"s1\"") && other.message().contains("boom"),
            "{other:?}"
        );
    }
}
