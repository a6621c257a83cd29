//! HTTP/2 clients against the client timeout, frame by frame: an idle
//! connection is sent GOAWAY before it is closed; a client that stops
//! granting flow-control window for its response, or stops sending its
//! request body, is disconnected, as over HTTP/1.1; a slow but steady
//! reader is not, and neither is a connection with another stream still
//! waiting on its backend.
//!
//! Timers never fire early, so each test also checks that nothing was cut
//! before its timeout. Build the gateway first: `cargo build --example
//! gateway`.

mod support;

use support::*;
use tokio::io::AsyncWriteExt;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// What each side may send on a stream, and on the connection, before the
/// other grants more (RFC 9113, 6.9.2).
const INITIAL_WINDOW: usize = 65_535;

/// An HTTP/2 frame as read off the wire.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// The test's end of an HTTP/2 connection, a frame at a time.
struct Http2 {
    socket: TcpStream,
}

impl Http2 {
    /// Connects, and sends the preface and empty SETTINGS.
    async fn connect(addr: SocketAddr) -> Http2 {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut http2 = Http2 { socket };
        http2.send(SETTINGS, 0, 0, &[]).await;
        http2
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.write(kind, flags, stream, payload).await.unwrap();
    }

    async fn write(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut frame = vec![length[1], length[2], length[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.socket.write_all(&frame).await
    }

    /// Opens `stream` with a GET of `path` (under 127 bytes).
    async fn get(&mut self, stream: u32, path: &str) {
        // HPACK: :method GET and :scheme http from the static table, then
        // :path and :authority as literals with the static table's names.
        let mut block = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(b"\x01\x04test");
        self.send(HEADERS, END_STREAM | END_HEADERS, stream, &block)
            .await;
    }

    /// Opens `stream` with the head of a POST to / of a body of `length`
    /// bytes (`length` under 1,000).
    async fn post(&mut self, stream: u32, length: usize) {
        // As `get`, with :method POST, :path / and content-length (static
        // table entry 28).
        let length = length.to_string();
        let mut block = b"\x83\x86\x84\x01\x04test\x0f\x0d".to_vec();
        block.push(u8::try_from(length.len()).unwrap());
        block.extend_from_slice(length.as_bytes());
        self.send(HEADERS, END_HEADERS, stream, &block).await;
    }

    /// Lets the gateway send `bytes` more on `stream` (0: the connection).
    async fn grant(&mut self, stream: u32, bytes: u32) {
        self.send(WINDOW_UPDATE, 0, stream, &bytes.to_be_bytes())
            .await;
    }

    /// The next frame other than SETTINGS and PING, which are answered as
    /// a client does (if the connection is still open for it); `None` once
    /// the gateway has closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            let mut head = [0u8; 9];
            let read = tokio::time::timeout(DEADLINE, self.socket.read_exact(&mut head)).await;
            read.expect("no frame and no close in time").ok()?;
            let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; length];
            self.socket.read_exact(&mut payload).await.ok()?;
            let frame = Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
                payload,
            };
            match (frame.kind, frame.flags & ACK) {
                (SETTINGS, 0) => {
                    let _ = self.write(SETTINGS, ACK, 0, &[]).await;
                }
                (PING, 0) => {
                    let _ = self.write(PING, ACK, 0, &frame.payload).await;
                }
                (SETTINGS | PING, _) => {}
                _ => return Some(frame),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_sent_goaway_before_it_is_closed() {
    let backend = Backend::start("b1").await;
    let gateway = Gateway::start(&[&backend], &["--client-timeout", "1"]).await;

    let started = Instant::now();
    let mut client = Http2::connect(gateway.addr).await;
    let mut goaways = Vec::new();
    while let Some(frame) = client.next().await {
        if frame.kind == GOAWAY {
            assert!(
                started.elapsed() >= Duration::from_secs(1),
                "GOAWAY after {:?}, before the 1 s timeout",
                started.elapsed()
            );
            let last_stream = u32::from_be_bytes(frame.payload[0..4].try_into().unwrap());
            let error = u32::from_be_bytes(frame.payload[4..8].try_into().unwrap());
            goaways.push((last_stream & 0x7fff_ffff, error));
        }
    }
    // GOAWAY before the close, without an error, the last one saying that
    // no stream was served. (hyper sends two: one that warns, with a PING,
    // and one once the client has answered the PING.)
    assert!(!goaways.is_empty(), "closed without a GOAWAY");
    assert!(goaways.iter().all(|&(_, error)| error == 0), "{goaways:?}");
    assert_eq!(goaways.last(), Some(&(0, 0)), "{goaways:?}");

    gateway.assert_keeps_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_granting_window_is_disconnected_after_the_client_timeout() {
    const BIG: usize = 64 << 20;
    let backend = big_backend(BIG).await;
    let gateway = Gateway::start(&[&backend], &["--client-timeout", "1"]).await;

    // Reads its socket, but never lets the response past the first window.
    let started = Instant::now();
    let mut client = Http2::connect(gateway.addr).await;
    client.get(1, "/").await;
    let mut got = 0;
    let mut answered = false;
    while let Some(frame) = client.next().await {
        match frame.kind {
            HEADERS => answered = true,
            DATA => got += frame.payload.len(),
            _ => {}
        }
    }
    assert!(answered, "no response head");
    assert!(got <= INITIAL_WINDOW, "{got} bytes past the window");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "cut after {:?}, before the 1 s timeout",
        started.elapsed()
    );

    gateway.assert_keeps_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_reader_gets_the_whole_response() {
    const SIZE: usize = 16 << 20;
    const STEP: usize = 1 << 20;
    let backend = big_backend(SIZE).await;
    let gateway = Gateway::start(&[&backend], &["--client-timeout", "1"]).await;

    // Takes a mebibyte every 200 ms: over 3 s, more than twice the
    // timeout, but never a whole timeout without granting more.
    let started = Instant::now();
    let mut client = Http2::connect(gateway.addr).await;
    client.get(1, "/").await;
    let mut got = 0;
    let mut window = INITIAL_WINDOW;
    loop {
        let frame = client.next().await.expect("closed mid-response");
        if frame.kind != DATA {
            continue;
        }
        got += frame.payload.len();
        window -= frame.payload.len();
        if frame.flags & END_STREAM != 0 {
            break;
        }
        if window == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let step = u32::try_from(STEP).unwrap();
            client.grant(1, step).await;
            client.grant(0, step).await;
            window = STEP;
        }
    }
    assert_eq!(got, SIZE);
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_waiting_on_its_backend_keeps_the_connection_open() {
    let app = axum::Router::new()
        .route(
            "/big",
            axum::routing::get(|| async { vec![b'x'; 64 << 20] }),
        )
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                "slow answer"
            }),
        );
    let backend = Backend::serve("b1", "127.0.0.1:0".parse().unwrap(), app).await;
    let gateway = Gateway::start(&[&backend], &["--client-timeout", "1"]).await;

    // Stream 1 is never granted more than its first window; stream 3
    // waits on a backend slower than the client timeout. The connection
    // has room for both.
    let started = Instant::now();
    let mut client = Http2::connect(gateway.addr).await;
    client.grant(0, 16 << 20).await;
    client.get(1, "/big").await;
    client.get(3, "/slow").await;
    let mut slow = Vec::new();
    loop {
        let frame = client
            .next()
            .await
            .expect("closed with a stream waiting on its backend");
        if frame.kind == DATA && frame.stream == 3 {
            slow.extend_from_slice(&frame.payload);
            if frame.flags & END_STREAM != 0 {
                break;
            }
        }
    }
    assert_eq!(slow, b"slow answer");
    assert!(started.elapsed() >= Duration::from_millis(2500));

    // Now only the stalled stream is left: the client timeout runs from
    // when the gateway ended stream 3, which the backend answered 2.5 s or
    // more after the start (read here a little later).
    while client.next().await.is_some() {}
    assert!(
        started.elapsed() >= Duration::from_millis(3500),
        "cut {:?} after the start, before the 1 s timeout that follows the slow answer",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_its_body_is_disconnected_after_the_client_timeout() {
    let app = axum::Router::new()
        .fallback(|body: axum::body::Bytes| async move { format!("got {} bytes", body.len()) });
    let backend = Backend::serve("b1", "127.0.0.1:0".parse().unwrap(), app).await;
    let gateway = Gateway::start(&[&backend], &["--client-timeout", "1"]).await;

    // Announces 100 bytes, sends 10, then nothing.
    let started = Instant::now();
    let mut client = Http2::connect(gateway.addr).await;
    client.post(1, 100).await;
    client.send(DATA, 0, 1, b"ten bytes!").await;
    while let Some(frame) = client.next().await {
        assert!(frame.stream != 1 || frame.kind != DATA, "answered a part");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "cut after {:?}, before the 1 s timeout",
        started.elapsed()
    );

    // The whole body is answered.
    let mut client = Http2::connect(gateway.addr).await;
    client.post(1, 10).await;
    client.send(DATA, END_STREAM, 1, b"ten bytes!").await;
    let mut answer = Vec::new();
    loop {
        let frame = client.next().await.expect("closed before answering");
        if frame.kind == DATA {
            answer.extend_from_slice(&frame.payload);
            if frame.flags & END_STREAM != 0 {
                break;
            }
        }
    }
    assert_eq!(answer, b"got 10 bytes");
}
