//! A client's socket, watched until its protocol is known.
//!
//! hyper's timer for a request head starts only once hyper knows it is
//! serving HTTP/1.1. Before that it waits for bytes that tell HTTP/1.1 from
//! HTTP/2's preface, for as long as they take: a client that connects and
//! sends nothing (or a few bytes of the preface) would hold its connection
//! for ever. [`ClientStream`] says when the protocol is known, so that the
//! worker can close a connection that has not got that far in time.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What an HTTP/2 connection starts with (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client's socket that sets a flag once the bytes it has read tell
/// HTTP/1.1 from HTTP/2.
pub struct ClientStream {
    stream: TcpStream,
    preface: Preface,
    flag: Arc<AtomicBool>,
}

impl ClientStream {
    /// Wraps `stream`; the flag returned turns true once its protocol is
    /// known.
    pub fn new(stream: TcpStream) -> (ClientStream, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        let stream = ClientStream {
            stream,
            preface: Preface::default(),
            flag: Arc::clone(&flag),
        };
        (stream, flag)
    }
}

/// How far the bytes read so far go to tell the protocol: it is known at
/// the first byte off the HTTP/2 preface, or at the preface's end.
#[derive(Default)]
struct Preface {
    matched: usize,
    known: bool,
}

impl Preface {
    /// Takes the next bytes read; true once the protocol is known.
    fn saw(&mut self, bytes: &[u8]) -> bool {
        for &byte in bytes {
            if self.known {
                break;
            }
            if byte == H2_PREFACE[self.matched] {
                self.matched += 1;
                self.known = self.matched == H2_PREFACE.len();
            } else {
                self.known = true;
            }
        }
        self.known
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if !this.preface.known && this.preface.saw(&buf.filled()[before..]) {
            this.flag.store(true, Ordering::Release);
        }
        result
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
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

    /// Whether the protocol is known after `pieces`, read in turn.
    fn known_after(pieces: &[&[u8]]) -> bool {
        let mut preface = Preface::default();
        pieces.iter().fold(false, |_, piece| preface.saw(piece))
    }

    #[test]
    fn the_protocol_is_known_at_the_first_byte_off_the_preface() {
        assert!(known_after(&[b"G"]));
        assert!(known_after(&[b"P", b"O"]));
        assert!(known_after(&[b"PRI * HTTP/1.1"]));
        assert!(known_after(&[H2_PREFACE]));
        assert!(known_after(&[
            b"PRI * HTTP/2.0\r\n",
            b"\r\nSM\r\n\r\n",
            b"more"
        ]));
        assert!(!known_after(&[]));
        assert!(!known_after(&[b"P"]));
        assert!(!known_after(&[b"PRI * HTTP/2.0\r\n", b"\r\nSM"]));
    }
}
