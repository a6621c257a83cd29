//! One backend of the gateway: an HTTP/1.1 client to one upstream server.
//!
//! Connections are kept in a small idle pool. A request is handed back
//! unsent ([`Unsent`]) when no connection could be made, or when a pooled
//! connection turned out closed before the request was written: the layer
//! then retries it on the next candidate, whatever the method, because
//! nothing reached any backend.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tower::Service;
use tower_sticky::{BoxError, Unsent};

/// Why a backend did not answer. A concrete type (not a bare `BoxError`)
/// keeps the whole proxy future provably `Send`; an unsent request stays
/// reachable as its `source()`, for the layer's retry.
#[derive(Debug)]
pub struct ProxyError(BoxError);

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl ProxyError {
    fn new(error: impl Into<BoxError>) -> Self {
        ProxyError(error.into())
    }
}

/// The body the gateway answers with.
pub type Body = BoxBody<Bytes, BoxError>;

/// Idle connections kept per backend.
const IDLE_PER_BACKEND: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings shared by every upstream.
#[derive(Clone, Debug, Default)]
pub struct ProxyOptions {
    /// Keep the client's `Host` header instead of the backend's.
    pub preserve_host: bool,
}

/// A short response of the gateway's own.
pub fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The backend's service: forwards requests to one upstream server.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    authority: Authority,
    host: HeaderValue,
    options: ProxyOptions,
    idle: Mutex<Vec<SendRequest<Incoming>>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.inner.url)
            .finish()
    }
}

impl Upstream {
    /// An upstream at `url` (`http://host:port`, optionally with a
    /// trailing `/`).
    pub fn new(url: &str, options: &ProxyOptions) -> Result<Upstream, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(format!("{url:?}: only http:// backends are supported"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!(
                "{url:?}: give the backend as http://host:port, without a path"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        let authority = if authority.port().is_some() {
            authority
        } else {
            format!("{}:80", authority.host())
                .parse()
                .map_err(|e| format!("{url:?}: {e}"))?
        };
        let host =
            HeaderValue::from_str(authority.as_str()).map_err(|e| format!("{url:?}: {e}"))?;
        Ok(Upstream {
            inner: Arc::new(Inner {
                url: format!("http://{authority}"),
                authority,
                host,
                options: options.clone(),
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The backend's URL, as `http://host:port`.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    fn take_idle(&self) -> Option<SendRequest<Incoming>> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(sender) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Returns a connection to the pool once its response is read.
    fn recycle(&self, mut sender: SendRequest<Incoming>) {
        let this = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                let mut idle = this.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < IDLE_PER_BACKEND {
                    idle.push(sender);
                }
            }
        });
    }

    async fn connect(&self, upgrades: bool) -> Result<SendRequest<Incoming>, BoxError> {
        let address = self.inner.authority.as_str();
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| format!("connect to {address}: timed out"))??;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let result = if upgrades {
                connection.with_upgrades().await
            } else {
                connection.await
            };
            if let Err(error) = result {
                tracing::debug!(%error, "upstream connection closed");
            }
        });
        Ok(sender)
    }

    async fn forward(self, mut request: Request<Incoming>) -> Result<Response<Body>, ProxyError> {
        let upgrade = is_upgrade(request.headers());
        prepare(&mut request, &self.inner);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));

        // A pooled connection may have closed; if so the request comes back
        // untouched and goes out on a fresh connection.
        let mut request = request;
        if !upgrade {
            while let Some(mut sender) = self.take_idle() {
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        self.recycle(sender);
                        return Ok(finish(response));
                    }
                    Err(mut error) => match error.take_message() {
                        Some(unsent) => request = unsent,
                        None => return Err(ProxyError::new(error.into_error())),
                    },
                }
            }
        }
        let mut sender = match self.connect(upgrade).await {
            Ok(sender) => sender,
            // Nothing was sent: the layer may place the request elsewhere.
            Err(error) => return Err(ProxyError::new(Unsent::new(request, error))),
        };
        let mut response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut error) => {
                return match error.take_message() {
                    Some(unsent) => Err(ProxyError::new(Unsent::new(unsent, error.into_error()))),
                    None => Err(ProxyError::new(error.into_error())),
                }
            }
        };
        if let Some(client_upgrade) = client_upgrade {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    match tokio::try_join!(client_upgrade, upstream_upgrade) {
                        Ok((client, upstream)) => {
                            let (mut client, mut upstream) =
                                (TokioIo::new(client), TokioIo::new(upstream));
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                        Err(error) => tracing::debug!(%error, "upgrade failed"),
                    }
                });
                let (parts, body) = response.into_parts();
                return Ok(Response::from_parts(
                    parts,
                    body.map_err(Into::into).boxed(),
                ));
            }
        } else {
            self.recycle(sender);
        }
        Ok(finish(response))
    }
}

impl Service<Request<Incoming>> for Upstream {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        Box::pin(self.clone().forward(request))
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, and those the `Connection` header names.
/// An upgrade keeps `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        // `Connection: upgrade` names the Upgrade header itself, which an
        // upgrade must carry to the backend.
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn prepare(request: &mut Request<Incoming>, upstream: &Inner) {
    let upgrade = is_upgrade(request.headers());
    let client = request.extensions().get::<SocketAddr>().map(|a| a.ip());
    let original_host = request.headers().get(header::HOST).cloned().or_else(|| {
        request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
    *request.version_mut() = Version::HTTP_11;

    let headers = request.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    if let Some(ip) = client {
        let prior = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        let chain = if prior.is_empty() {
            ip.to_string()
        } else {
            format!("{prior}, {ip}")
        };
        if let Ok(value) = HeaderValue::from_str(&chain) {
            headers.insert("x-forwarded-for", value);
        }
        let node = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let mut element = format!("for={node};proto=http");
        if let Some(host) = original_host.as_ref().and_then(|h| h.to_str().ok()) {
            element.push_str(&format!(";host=\"{host}\""));
        }
        if let Ok(value) = HeaderValue::from_str(&element) {
            headers.append(header::FORWARDED, value);
        }
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = &original_host {
        headers.insert("x-forwarded-host", host.clone());
    }
    if !upstream.options.preserve_host || original_host.is_none() {
        headers.insert(header::HOST, upstream.host.clone());
    }
}

fn finish(response: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(parts, body.map_err(Into::into).boxed())
}
