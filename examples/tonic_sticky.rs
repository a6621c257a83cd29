//! Sticky gRPC clients with tonic: every call of a session reaches the same
//! server, where `Channel::balance_list` would spread them.
//!
//! ```text
//! cargo run --example tonic_sticky
//! RUST_LOG=tower_sticky=debug cargo run --example tonic_sticky   # one line per placement
//! ```
//!
//! The program starts three tonic servers (`alpha`, `beta`, `gamma`) on
//! loopback ports. Each counts the calls of every session in its own
//! memory, keyed by the `x-session-id` metadata entry (or, for the demo's
//! one session without an id, the sticky token)
//! and answers `"<server> <count>"`: a call that reaches the wrong server
//! shows up as another name, or a count that starts again at 1. The client's
//! transport is a [`Sticky`] service over one lazily connected [`Channel`]
//! per server. The program then makes unary, server-streaming and
//! bidirectional-streaming calls for a few sessions, a session without an
//! id that carries the layer's token instead, and stops one server to show
//! its sessions moving.
//!
//! No `.proto` and no protoc: messages are plain UTF-8 strings
//! ([`Utf8Codec`]), and [`CounterClient`] / [`CounterServer`] are the glue
//! `tonic-build` would generate, written by hand. With generated code the
//! transport part below is the same.
//!
//! # From `balance_list` to the sticky stack
//!
//! ```ignore
//! // Before: each call goes to whichever server the balancer picks.
//! let endpoints = addrs.iter().map(|a| Channel::from_shared(format!("http://{a}")).unwrap());
//! let mut client = CounterClient::new(Channel::balance_list(endpoints));
//!
//! // After: one lazily connected Channel per server; the layer keeps each
//! // session (its `x-session-id`, else the token it hands out) on one.
//! let channels = addrs.iter().map(|a| {
//!     let endpoint = Channel::from_shared(format!("http://{a}")).unwrap();
//!     (BackendSpec::new(a.to_string()), endpoint.connect_lazy())
//! });
//! let keys = KeyRing::new([secret_shared_by_every_replica])?;
//! let config = PoolConfig::new(TokenCodec::new(keys, TokenConfig::new("x-sticky-token")));
//! let backends = Backends::new(config, channels)?;
//! let transport = ServiceBuilder::new()
//!     .map_err(Status::from) // tower-sticky's `tonic` feature
//!     .layer(
//!         StickyLayer::new()
//!             .affinity([Affinity::Header(HeaderName::from_static("x-session-id")), Affinity::Cookie])
//!             .token_header(HeaderName::from_static("x-sticky-token"))
//!             .send_cookie(false),
//!     )
//!     .service(backends.clone());
//! let mut client = CounterClient::new(transport);
//! // Servers come and go through `backends` (add, remove, drain) or a
//! // `Discover` stream fed by service discovery: `backends.discover(stream)`.
//! ```
//!
//! Every call of a client must then carry `x-session-id`, or send back the
//! `x-sticky-token` its first response carried.
//!
//! The test `tests/tonic_e2e.rs` and the load comparison `benches/tonic.rs`
//! include this file as a module and reuse its servers and client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error;
use std::future::{ready, Future, Ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use http::HeaderName;
use hyper::body::Body as HttpBody;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::client::{Grpc, GrpcService};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::{NamedService, ServerStreamingService, StreamingService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{IntoRequest, IntoStreamingRequest, Request, Response, Status, Streaming};
use tower::util::MapErr;
use tower::ServiceBuilder;
use tower_sticky::sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
use tower_sticky::sticky_core::{BackendSpec, HealthPolicy, PoolConfig};
use tower_sticky::{Affinity, Backends, Placement, Sticky, StickyLayer};

type BoxError = Box<dyn Error + Send + Sync>;

/// The metadata entry that names a session.
pub const SESSION_HEADER: &str = "x-session-id";
/// The metadata entry that carries the layer's token, both ways.
pub const TOKEN_HEADER: &str = "x-sticky-token";
/// The demo's signing secret; give real replicas a shared secret of their own.
const SECRET: &str = "tonic example secret, 32 bytes long";

// ------------------------------------------------------------- the codec

/// Messages are UTF-8 strings, sent as they are.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Codec;

impl Codec for Utf8Codec {
    type Encode = String;
    type Decode = String;
    type Encoder = Utf8Codec;
    type Decoder = Utf8Codec;

    fn encoder(&mut self) -> Self::Encoder {
        Utf8Codec
    }

    fn decoder(&mut self) -> Self::Decoder {
        Utf8Codec
    }
}

impl Encoder for Utf8Codec {
    type Item = String;
    type Error = Status;

    fn encode(&mut self, item: String, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(item.as_bytes());
        Ok(())
    }
}

impl Decoder for Utf8Codec {
    type Item = String;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<String>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("not UTF-8: {e}")))
    }
}

// ------------------------------------------------------------ the server

/// One server's memory: calls per session.
#[derive(Clone, Debug)]
pub struct Shard {
    name: Arc<str>,
    sessions: Arc<Mutex<HashMap<String, u64>>>,
}

impl Shard {
    /// An empty shard called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            sessions: Arc::default(),
        }
    }

    /// `"<server> <count>"`: the session's calls so far on this server,
    /// this one included; 0 for a call with no session key.
    fn reply(&self, key: Option<&str>) -> String {
        let count = match key {
            Some(key) => {
                let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
                let count = sessions.entry(key.to_owned()).or_default();
                *count += 1;
                *count
            }
            None => 0,
        };
        format!("{} {count}", self.name)
    }

    /// Sessions this server has seen.
    pub fn sessions(&self) -> usize {
        self.sessions.lock().map_or(0, |s| s.len())
    }
}

/// The session a call belongs to, as the server sees it: `x-session-id`,
/// else the sticky token the client sent back. The token is good enough for
/// this demo's one session without an id, but it is no session identity:
/// it names a server and a time to the second, so sessions that start on
/// one server in the same second carry the same token. Real sessions that
/// need counting need an id of their own.
fn session_key(metadata: &MetadataMap) -> Option<String> {
    [SESSION_HEADER, TOKEN_HEADER]
        .iter()
        .find_map(|name| metadata.get(*name)?.to_str().ok())
        .map(str::to_owned)
}

/// `rpc Visit(string) returns (string)`.
struct Visit(Shard);

impl UnaryService<String> for Visit {
    type Response = String;
    type Future = Ready<Result<Response<String>, Status>>;

    fn call(&mut self, request: Request<String>) -> Self::Future {
        let key = session_key(request.metadata());
        ready(Ok(Response::new(self.0.reply(key.as_deref()))))
    }
}

/// `rpc Watch(string) returns (stream string)`: the request is how many
/// replies to send.
struct Watch(Shard);

impl ServerStreamingService<String> for Watch {
    type Response = String;
    type ResponseStream = tokio_stream::Iter<std::vec::IntoIter<Result<String, Status>>>;
    type Future = Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<String>) -> Self::Future {
        let key = session_key(request.metadata());
        let Ok(n) = request.get_ref().trim().parse::<usize>() else {
            return ready(Err(Status::invalid_argument("send a number of replies")));
        };
        let replies: Vec<_> = (0..n).map(|_| Ok(self.0.reply(key.as_deref()))).collect();
        ready(Ok(Response::new(tokio_stream::iter(replies))))
    }
}

/// `rpc Chat(stream string) returns (stream string)`: one reply per message.
struct Chat(Shard);

type ReplyStream = Pin<Box<dyn Stream<Item = Result<String, Status>> + Send>>;

impl StreamingService<String> for Chat {
    type Response = String;
    type ResponseStream = ReplyStream;
    type Future = Ready<Result<Response<ReplyStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<String>>) -> Self::Future {
        let key = session_key(request.metadata());
        let shard = self.0.clone();
        let replies = request
            .into_inner()
            .map(move |message| message.map(|_| shard.reply(key.as_deref())));
        ready(Ok(Response::new(Box::pin(replies) as ReplyStream)))
    }
}

/// The `demo.Counter` service, dispatching on the path as generated
/// servers do.
#[derive(Clone, Debug)]
pub struct CounterServer {
    shard: Shard,
}

impl CounterServer {
    /// Serves `shard`.
    pub fn new(shard: Shard) -> Self {
        Self { shard }
    }
}

impl NamedService for CounterServer {
    const NAME: &'static str = "demo.Counter";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl tower::Service<http::Request<Body>> for CounterServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shard = self.shard.clone();
        let mut grpc = tonic::server::Grpc::new(Utf8Codec);
        match request.uri().path() {
            "/demo.Counter/Visit" => {
                Box::pin(async move { Ok(grpc.unary(Visit(shard), request).await) })
            }
            "/demo.Counter/Watch" => {
                Box::pin(async move { Ok(grpc.server_streaming(Watch(shard), request).await) })
            }
            "/demo.Counter/Chat" => {
                Box::pin(async move { Ok(grpc.streaming(Chat(shard), request).await) })
            }
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// A server running on a loopback port.
#[derive(Debug)]
pub struct RunningServer {
    /// Its name, also its backend name.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its memory.
    pub shard: Shard,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// Starts a server called `name` on `127.0.0.1:0`.
    pub async fn start(name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shard = Shard::new(name);
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let service = CounterServer::new(shard.clone());
        let task = tokio::spawn(Server::builder().serve_with_incoming_shutdown(
            service,
            incoming,
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Self {
            name: name.to_owned(),
            addr,
            shard,
            stop: Some(stop),
            task,
        })
    }

    /// An endpoint for this server.
    pub fn endpoint(&self) -> Endpoint {
        Channel::from_shared(format!("http://{}", self.addr)).expect("a valid URI")
    }

    /// A channel that connects on its first call.
    pub fn lazy_channel(&self) -> Channel {
        self.endpoint().connect_lazy()
    }

    /// This server as a backend.
    pub fn backend(&self) -> (BackendSpec, Channel) {
        (BackendSpec::new(self.name.clone()), self.lazy_channel())
    }

    /// Stops accepting, lets calls under way finish, closes every
    /// connection and returns when the server is gone.
    pub async fn stop(mut self) -> Result<(), BoxError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }
}

// ------------------------------------------------------------ the client

/// A `demo.Counter` client over any gRPC transport, as tonic-build would
/// generate it.
#[derive(Clone, Debug)]
pub struct CounterClient<T> {
    inner: Grpc<T>,
}

impl<T> CounterClient<T>
where
    T: GrpcService<Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    <T::ResponseBody as HttpBody>::Error: Into<BoxError> + Send,
{
    /// A client over `transport`: a `Channel`, a balanced channel, or the
    /// sticky stack.
    pub fn new(transport: T) -> Self {
        Self {
            inner: Grpc::new(transport),
        }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("service was not ready: {}", e.into())))
    }

    /// `Visit`: one reply.
    pub async fn visit(
        &mut self,
        request: impl IntoRequest<String>,
    ) -> Result<Response<String>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/demo.Counter/Visit");
        self.inner
            .unary(request.into_request(), path, Utf8Codec)
            .await
    }

    /// `Watch`: as many replies as the request says.
    pub async fn watch(
        &mut self,
        request: impl IntoRequest<String>,
    ) -> Result<Response<Streaming<String>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/demo.Counter/Watch");
        self.inner
            .server_streaming(request.into_request(), path, Utf8Codec)
            .await
    }

    /// `Chat`: one reply per message.
    pub async fn chat(
        &mut self,
        request: impl IntoStreamingRequest<Message = String>,
    ) -> Result<Response<Streaming<String>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/demo.Counter/Chat");
        self.inner
            .streaming(request.into_streaming_request(), path, Utf8Codec)
            .await
    }
}

/// A reply, parsed: which server answered and the session's count there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The server's name.
    pub server: String,
    /// The session's calls on that server so far (0: no session key).
    pub count: u64,
}

impl Reply {
    /// Parses `"<server> <count>"`.
    pub fn parse(text: &str) -> Self {
        let (server, count) = text.split_once(' ').expect("`<server> <count>`");
        Self {
            server: server.to_owned(),
            count: count.parse().expect("a count"),
        }
    }
}

/// A request of session `id`.
pub fn in_session<T>(message: T, id: &str) -> Request<T> {
    with_metadata(message, SESSION_HEADER, id)
}

/// A request that sends back the sticky `token`.
pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    with_metadata(message, TOKEN_HEADER, token)
}

fn with_metadata<T>(message: T, name: &'static str, value: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = MetadataValue::try_from(value).expect("printable ASCII");
    request.metadata_mut().insert(name, value);
    request
}

/// The token a response carries, when the layer issued one.
pub fn token_of<T>(response: &Response<T>) -> Option<String> {
    let value = response.metadata().get(TOKEN_HEADER)?;
    value.to_str().ok().map(str::to_owned)
}

/// Where the layer placed a call (a response extension).
pub fn placement_of<T>(response: &Response<T>) -> Option<&Placement> {
    response.extensions().get::<Placement>()
}

// ----------------------------------------------------- the sticky stack

/// Pool settings: tokens named after their metadata entry, and the passive
/// health policy that decides how soon a dead server's sessions move.
pub fn pool_config(health: HealthPolicy) -> PoolConfig {
    let keys = KeyRing::new([SECRET]).expect("a long enough secret");
    PoolConfig::new(TokenCodec::new(keys, TokenConfig::new(TOKEN_HEADER))).health(health)
}

/// Sessions keyed by `x-session-id`; calls without one get a token in
/// `x-sticky-token` metadata, never a cookie.
pub fn sticky_layer() -> StickyLayer {
    StickyLayer::new()
        .affinity([
            Affinity::Header(HeaderName::from_static(SESSION_HEADER)),
            Affinity::Cookie,
        ])
        .token_header(HeaderName::from_static(TOKEN_HEADER))
        .send_cookie(false)
}

/// The client's transport: the sticky stack, with its errors (no server
/// can take the call, say) as gRPC statuses.
pub type Transport = MapErr<Sticky<Channel>, fn(tower_sticky::Error) -> Status>;

/// The sticky transport over `servers`, and the handle that changes them.
pub fn sticky_transport(
    servers: &[RunningServer],
    health: HealthPolicy,
) -> (Transport, Backends<Channel>) {
    let backends = Backends::new(pool_config(health), servers.iter().map(|s| s.backend()))
        .expect("distinct server names");
    let transport = ServiceBuilder::new()
        .map_err(Status::from as fn(tower_sticky::Error) -> Status)
        .layer(sticky_layer())
        .service(backends.clone());
    (transport, backends)
}

// ------------------------------------------------------------- the demo

fn describe<T>(response: &Response<T>) -> String {
    placement_of(response).map_or_else(String::new, |p| format!("{}/{}", p.outcome, p.source))
}

async fn collect(mut stream: Streaming<String>) -> Result<Vec<String>, Status> {
    let mut replies = Vec::new();
    while let Some(reply) = stream.message().await? {
        replies.push(reply);
    }
    Ok(replies)
}

/// Unary, server-streaming and bidirectional calls of session `id`; every
/// reply must come from one server.
async fn session(client: &mut CounterClient<Transport>, id: &str) -> Result<String, BoxError> {
    let mut replies = Vec::new();
    let mut how = String::new();
    for _ in 0..2 {
        let response = client.visit(in_session("hello".to_owned(), id)).await?;
        how = describe(&response);
        replies.push(response.into_inner());
    }
    let response = client.watch(in_session("3".to_owned(), id)).await?;
    replies.extend(collect(response.into_inner()).await?);
    let messages = ["a", "b", "c"].map(str::to_owned);
    let response = client
        .chat(in_session(tokio_stream::iter(messages), id))
        .await?;
    replies.extend(collect(response.into_inner()).await?);

    let parsed: Vec<Reply> = replies.iter().map(|r| Reply::parse(r)).collect();
    let home = parsed[0].server.clone();
    let counts: Vec<String> = parsed.iter().map(|r| r.count.to_string()).collect();
    println!(
        "  {id:<6} 2 unary + 1 server stream (3) + 1 bidi stream (3): all on {home} ({how}), counts {}",
        counts.join(" ")
    );
    assert!(parsed.iter().all(|r| r.server == home), "{replies:?}");
    assert!(
        parsed.iter().zip(1..).all(|(r, n)| r.count == n),
        "{replies:?}"
    );
    Ok(home)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    let mut servers = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let server = RunningServer::start(name).await?;
        println!("server {name} on {}", server.addr);
        servers.push(server);
    }
    // A gRPC client sees errors only from the transport (a gRPC error
    // status is an HTTP 200), so one is enough to mark a server down here.
    // A caller's own deadline also ends as such an error: with deadlines
    // in play, raise the threshold or leave them out of health
    // (`StickyLayer::failure_errors`).
    let health = HealthPolicy {
        failure_threshold: 1,
        cooldown: Duration::from_secs(30),
    };
    let (transport, backends) = sticky_transport(&servers, health);
    let mut client = CounterClient::new(transport);

    println!("\nsessions keyed by {SESSION_HEADER}:");
    let mut homes = Vec::new();
    for id in ["ana", "bo", "cy", "dee", "eli", "fay"] {
        homes.push((id, session(&mut client, id).await?));
    }

    println!("\na session without {SESSION_HEADER}:");
    let first = client.visit(Request::new("hello".to_owned())).await?;
    let token = token_of(&first).ok_or("the first response carries a token")?;
    println!(
        "  first call: {} ({}), {TOKEN_HEADER}: {}...",
        first.get_ref(),
        describe(&first),
        &token[..token.len().min(16)]
    );
    let home = Reply::parse(first.get_ref()).server;
    for _ in 0..3 {
        let response = client.visit(with_token("hello".to_owned(), &token)).await?;
        println!(
            "  with the token: {} ({})",
            response.get_ref(),
            describe(&response)
        );
        assert_eq!(Reply::parse(response.get_ref()).server, home);
    }

    let victim = servers.pop().expect("three servers");
    let name = victim.name.clone();
    println!("\nstopping {name}:");
    victim.stop().await?;
    for (id, home) in &homes {
        match client.visit(in_session("hello".to_owned(), id)).await {
            Ok(response) => println!(
                "  {id:<6} (was on {home}) -> {} ({})",
                response.get_ref(),
                describe(&response)
            ),
            Err(status) => println!(
                "  {id:<6} (was on {home}) -> {:?}: {} (this call failed; {name} is now marked unhealthy)",
                status.code(),
                status.message()
            ),
        }
    }
    for (id, home) in homes.iter().filter(|(_, home)| *home == name) {
        let response = client.visit(in_session("hello".to_owned(), id)).await?;
        println!(
            "  {id:<6} (was on {home}) -> {} ({})",
            response.get_ref(),
            describe(&response)
        );
    }

    println!("\nbackends:");
    for b in backends.status() {
        println!(
            "  {:<6} {:?}: {} requests, {} new sessions, {} hits, {} failovers, {} failures",
            b.name.as_str(),
            b.state,
            b.counters.requests,
            b.counters.new_sessions,
            b.counters.hits,
            b.counters.failovers,
            b.counters.failures,
        );
    }
    for server in servers {
        println!("  {} saw {} sessions", server.name, server.shard.sessions());
        server.stop().await?;
    }
    Ok(())
}
