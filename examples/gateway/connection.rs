//! A client connection served by hyper: over HTTP/2 if it opens with the
//! HTTP/2 connection preface (prior knowledge), over HTTP/1.1 otherwise.
//!
//! hyper-util's `auto` connection tells the two apart the same way, but
//! then gives hyper only the bytes it looked at for its first read. With
//! the rest of the request head still to come, hyper makes room for more,
//! and its read buffer stays at twice its usual size (16 KiB) for as long
//! as the connection lives. Here hyper's first read gets those bytes and
//! whatever else has arrived, which is the whole head of a usual request:
//! an idle HTTP/1.1 connection takes a third less memory (BENCHMARKS.md).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower_sticky::BoxError;

use crate::client::Graceful;

/// What every HTTP/2 connection starts with (RFC 9113, 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How the gateway speaks to its clients, in either protocol.
#[derive(Clone)]
pub struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    /// hyper's defaults, except that each HTTP/1.1 message is written from
    /// one buffer, and that the client timeout is the gateway's own (see
    /// the client module), not hyper's timer for a request head.
    pub fn new() -> Protocols {
        let mut http1 = http1::Builder::new();
        http1.writev(false).header_read_timeout(None);
        Protocols {
            http1,
            http2: http2::Builder::new(TokioExecutor::new()),
        }
    }

    /// Serves the client connection `io` with `service`, HTTP/1.1
    /// upgrades included, once its first bytes show its protocol.
    pub fn serve<T, S>(&self, io: T, service: S) -> Connection<T, S>
    where
        S: hyper::service::HttpService<Incoming>,
    {
        Connection {
            state: State::Sniffing {
                io: Some(io),
                seen: [0; PREFACE.len()],
                filled: 0,
                service: Some(service),
                protocols: self.clone(),
            },
            closing: false,
        }
    }
}

pin_project! {
    /// A client connection being served; a future that ends with it.
    pub struct Connection<T, S>
    where
        S: hyper::service::HttpService<Incoming>,
    {
        #[pin]
        state: State<T, S>,
        // Asked to close politely; passed on to hyper at the next poll.
        closing: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<T, S>
    where
        S: hyper::service::HttpService<Incoming>,
    {
        /// Reading until the bytes in hand are the preface or cannot be.
        Sniffing {
            io: Option<T>,
            seen: [u8; PREFACE.len()],
            filled: usize,
            service: Option<S>,
            protocols: Protocols,
        },
        Http1 { #[pin] connection: http1::UpgradeableConnection<TokioIo<Prefixed<T>>, S> },
        // Boxed: HTTP/2's state is twice HTTP/1.1's, which need not make
        // room for it.
        Http2 { connection: Pin<Box<http2::Connection<TokioIo<Prefixed<T>>, S, TokioExecutor>>> },
        Closed,
    }
}

impl<T, S, B> Future for Connection<T, S>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: 'static,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut state = this.state;
        if std::mem::take(this.closing) {
            // Over HTTP/1.1 the response in progress is finished, if any;
            // over HTTP/2 the open streams, after a GOAWAY. A connection
            // whose protocol is not known yet has had no request.
            match state.as_mut().project() {
                StateProj::Sniffing { .. } => state.set(State::Closed),
                StateProj::Http1 { connection } => connection.graceful_shutdown(),
                StateProj::Http2 { connection } => connection.as_mut().graceful_shutdown(),
                StateProj::Closed => {}
            }
        }
        loop {
            let next = match state.as_mut().project() {
                StateProj::Sniffing {
                    io,
                    seen,
                    filled,
                    service,
                    protocols,
                } => {
                    let stream = io.as_mut().expect("a connection sniffed once");
                    while seen[..*filled] == PREFACE[..*filled] && *filled < PREFACE.len() {
                        let mut buf = ReadBuf::new(&mut seen[*filled..]);
                        ready!(Pin::new(&mut *stream).poll_read(cx, &mut buf))?;
                        match buf.filled().len() {
                            // Closed before a request: nothing to serve.
                            0 => {
                                state.set(State::Closed);
                                return Poll::Ready(Ok(()));
                            }
                            n => *filled += n,
                        }
                    }
                    let io = TokioIo::new(Prefixed {
                        seen: *seen,
                        start: 0,
                        end: *filled,
                        io: io.take().expect("a connection sniffed once"),
                    });
                    let service = service.take().expect("a connection sniffed once");
                    if seen == PREFACE {
                        State::Http2 {
                            connection: Box::pin(protocols.http2.serve_connection(io, service)),
                        }
                    } else {
                        State::Http1 {
                            connection: protocols
                                .http1
                                .serve_connection(io, service)
                                .with_upgrades(),
                        }
                    }
                }
                StateProj::Http1 { connection } => return connection.poll(cx).map_err(Into::into),
                StateProj::Http2 { connection } => {
                    return connection.as_mut().poll(cx).map_err(Into::into)
                }
                StateProj::Closed => return Poll::Ready(Ok(())),
            };
            state.set(next);
        }
    }
}

impl<T, S> Graceful for Connection<T, S>
where
    S: hyper::service::HttpService<Incoming>,
    Self: Future<Output = Result<(), BoxError>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        *self.project().closing = true;
    }

    fn multiplexed(&self) -> bool {
        matches!(self.state, State::Http2 { .. })
    }
}

/// A connection whose first bytes were read to tell its protocol: they
/// come first, followed in the same read by whatever else has arrived.
struct Prefixed<T> {
    seen: [u8; PREFACE.len()],
    /// What of `seen` is still to be read.
    start: usize,
    end: usize,
    io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.start == this.end {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = buf.remaining().min(this.end - this.start);
        buf.put_slice(&this.seen[this.start..this.start + n]);
        this.start += n;
        if this.start == this.end && buf.remaining() > 0 {
            // An error here comes again at the next read, or the end of
            // the stream does: hyper sees it then, with what came before.
            let _ = Pin::new(&mut this.io).poll_read(cx, buf);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::Full;
    use hyper::body::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    fn serve(io: DuplexStream) -> impl Graceful {
        let service = hyper::service::service_fn(|_: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        Protocols::new().serve(io, service)
    }

    /// Sends `request`, then reads until `until` has come, or the stream
    /// ends.
    async fn ask(client: &mut DuplexStream, request: &[u8], until: &[u8]) -> Vec<u8> {
        client.write_all(request).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0; 1024];
        while !got.windows(until.len()).any(|w| w == until) {
            match client.read(&mut buf).await.unwrap() {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    }

    /// Polls `connection` once.
    async fn poll_once<C: Future + Unpin>(connection: &mut C) -> Poll<C::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *connection).poll(cx))).await
    }

    #[tokio::test]
    async fn the_first_read_gets_the_sniffed_bytes_and_what_came_after_them() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let request = b"GET / HTTP/1.1\r\nHost: example.com\r\nCookie: a=b\r\n\r\n";
        client.write_all(request).await.unwrap();
        let mut seen = [0; PREFACE.len()];
        server.read_exact(&mut seen[..3]).await.unwrap();
        let mut prefixed = Prefixed {
            seen,
            start: 0,
            end: 3,
            io: server,
        };
        let mut first = vec![0; 8192];
        let n = prefixed.read(&mut first).await.unwrap();
        assert_eq!(&first[..n], request, "the whole head in one read");
        client.write_all(b"next").await.unwrap();
        let n = prefixed.read(&mut first).await.unwrap();
        assert_eq!(&first[..n], b"next");
    }

    #[tokio::test]
    async fn a_request_that_is_not_the_http2_preface_is_served_as_http1() {
        let (mut client, server) = tokio::io::duplex(4096);
        tokio::spawn(serve(server));
        // "PRI" begins the preface, and then the bytes part ways.
        let answer = ask(
            &mut client,
            b"PRIX / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with(b"HTTP/1.1 "), "{answer:?}");
        let answer = ask(
            &mut client,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\r\n\r\nok",
        )
        .await;
        assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"), "{answer:?}");
    }

    #[tokio::test]
    async fn a_preface_in_two_parts_is_served_as_http2() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut connection = Box::pin(serve(server));
        client.write_all(&PREFACE[..10]).await.unwrap();
        // The connection takes the first part and waits for more.
        assert!(poll_once(&mut connection).await.is_pending());
        client.write_all(&PREFACE[10..]).await.unwrap();
        // An empty SETTINGS frame.
        client
            .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut frame = [0; 9];
        client.read_exact(&mut frame).await.unwrap();
        assert_eq!(frame[3], 4, "the server's first frame is its SETTINGS");
    }

    #[tokio::test]
    async fn a_connection_closed_before_its_first_byte_ends_quietly() {
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        assert!(serve(server).await.is_ok());
    }

    #[tokio::test]
    async fn closing_politely_before_the_first_byte_ends_the_connection() {
        let (_client, server) = tokio::io::duplex(64);
        let mut connection = Box::pin(serve(server));
        assert!(poll_once(&mut connection).await.is_pending());
        connection.as_mut().graceful_shutdown();
        assert!(connection.await.is_ok());
    }
}
