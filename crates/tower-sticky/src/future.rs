//! The response future of [`Sticky`](crate::Sticky).

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::header::{HeaderValue, CACHE_CONTROL, SET_COOKIE};
use http::{Request, Response};
use pin_project_lite::pin_project;
use sticky_core::{BackendStats, Decision, Health, HealthPolicy, InFlight, Keys, Outcome};
use tower_service::Service;

use crate::affinity::{KeySource, Sources};
use crate::backends::Table;
use crate::body::ResponseBody;
use crate::error::{in_chain, shed, BoxError, Error, Unsent};
use crate::layer::Config;
use crate::service::{Cookies, Placement};

pin_project! {
    /// Response future of [`Sticky`](crate::Sticky): drives the chosen
    /// backend to readiness, calls it, and decorates its response.
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
        ctx: Ctx<S>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Ready { service: S, request: Option<Request<ReqBody>> },
        Calling { #[pin] future: S::Future },
        Rejected { error: Option<Error> },
        Done,
    }
}

struct Ctx<S> {
    table: Arc<Table<S>>,
    decision: Decision,
    sources: Sources,
    config: Arc<Config>,
    cookies: Arc<Cookies>,
    issue_tokens: bool,
    /// Whether the request is under the cookie's `Path`, so that a cookie
    /// set in its response would come back.
    cookie_in_path: bool,
    now: Duration,
    in_flight: Option<InFlight>,
    retried: bool,
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>> + Clone,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        table: Arc<Table<S>>,
        decision: Decision,
        sources: Sources,
        request: Request<ReqBody>,
        config: Arc<Config>,
        cookies: Arc<Cookies>,
        issue_tokens: bool,
        now: Duration,
    ) -> Self {
        let cookie_in_path = config.cookie.covers(client_path(&request));
        let state = match (decision.backend, decision.outcome) {
            (Some(b), _) => State::Ready {
                service: table.services[b].clone(),
                request: Some(request),
            },
            (None, Outcome::Rejected(reason)) => State::Rejected {
                error: Some(Error::Rejected(reason)),
            },
            (None, _) => State::Rejected {
                error: Some(Error::Rejected(sticky_core::Reason::Unavailable)),
            },
        };
        let in_flight = decision.backend.map(|b| table.snapshot.start_request(b));
        ResponseFuture {
            state,
            ctx: Ctx {
                table,
                decision,
                sources,
                config,
                cookies,
                issue_tokens,
                cookie_in_path,
                now,
                in_flight,
                retried: false,
            },
        }
    }
}

impl<S> Ctx<S> {
    /// The source of the key that placed the request (as last decided).
    fn source(&self) -> KeySource {
        self.sources.of(&self.decision)
    }

    fn backend_id(&self) -> Option<&sticky_core::BackendId> {
        self.decision
            .backend
            .map(|b| self.table.snapshot.member(b).id())
    }

    /// Feeds a backend's error to passive health, unless the layer's
    /// `failure_errors` leaves it out; a refused connection
    /// takes the backend out at once (a lazily connecting client, such as
    /// a tonic `Channel`, reports it only after taking the request). A
    /// request its stack shed as overloaded does not count: the backend is
    /// busy, not broken, and taking it out would pile its load on the
    /// others.
    fn record_failure(&self, error: &(dyn std::error::Error + 'static)) {
        if shed(error) || !(self.config.failure_errors)(error) {
            return;
        }
        if let Some(in_flight) = &self.in_flight {
            if connection_refused(error) {
                self.health_change(
                    in_flight.stats(),
                    "it refused a connection",
                    BackendStats::record_refused,
                );
            } else {
                self.health_change(
                    in_flight.stats(),
                    "failures in a row",
                    BackendStats::record_failure,
                );
            }
        }
    }

    /// Applies `record` to the backend's health, and logs when that takes
    /// the backend out of service or returns it: operators need to know.
    /// (A success after the cooldown returns it: the half-open probe's, or
    /// that of a request still under way.)
    fn health_change(
        &self,
        stats: &BackendStats,
        why: &'static str,
        record: impl FnOnce(&BackendStats, &HealthPolicy, Duration),
    ) {
        let policy = &self.table.snapshot.config().health;
        let before = stats.health(self.now);
        record(stats, policy, self.now);
        let after = stats.health(self.now);
        // Only passive health's own changes: a health checker's verdict,
        // even one landing in between, is the checker's to tell.
        let backend = || self.backend_id().map_or("?", |b| b.as_str());
        match (before, after) {
            (Health::Up, Health::Resting) => tracing::warn!(
                backend = backend(),
                why,
                failure_threshold = policy.failure_threshold,
                cooldown_secs = policy.cooldown.as_secs(),
                "backend taken out of service by passive health"
            ),
            (Health::Resting, Health::Up) => {
                tracing::info!(
                    backend = backend(),
                    "backend back in service: a request to it succeeded"
                )
            }
            _ => {}
        }
    }

    fn backend_error(&mut self, source: BoxError) -> Error {
        self.record_failure(&*source);
        self.in_flight = None;
        let backend = self.backend_id().cloned().unwrap_or_else(|| "?".into());
        tracing::debug!(backend = %backend, source = self.source().as_str(), error = %source, "sticky backend failed");
        Error::Backend { backend, source }
    }

    /// The chosen backend failed before the request was sent: place it
    /// once more, on the next candidate.
    fn retry(&mut self, source: BoxError) -> Result<S, Error>
    where
        S: Clone,
    {
        let failed = self.decision.backend;
        if self.retried || failed.is_none() {
            return Err(self.backend_error(source));
        }
        self.record_failure(&*source);
        self.retried = true;
        let keys = Keys {
            issue_token: self.issue_tokens,
            ..Keys::new()
        };
        let failed = failed.expect("checked above");
        let next = self
            .table
            .snapshot
            .retry(&self.decision, failed, &keys, self.now);
        tracing::debug!(
            failed = %self.table.snapshot.member(failed).id(),
            outcome = %next.outcome,
            error = %source,
            "sticky retry after a connection error"
        );
        self.decision = next;
        self.in_flight = None;
        match (self.decision.backend, self.decision.outcome) {
            (Some(b), _) => {
                self.in_flight = Some(self.table.snapshot.start_request(b));
                Ok(self.table.services[b].clone())
            }
            // No other backend to try: the failure is the one that was
            // tried, not a refusal to place the request.
            (None, Outcome::Rejected(sticky_core::Reason::Unavailable)) => {
                let backend = self.table.snapshot.member(failed).id().clone();
                Err(Error::Backend { backend, source })
            }
            (None, Outcome::Rejected(reason)) => Err(Error::Rejected(reason)),
            (None, _) => Err(Error::Rejected(sticky_core::Reason::Unavailable)),
        }
    }

    fn finish<B>(&mut self, mut response: Response<B>) -> Response<ResponseBody<B>> {
        let config = &self.config;
        // The request stays in flight until its body is over.
        let in_flight = self.in_flight.take();
        if let Some(in_flight) = &in_flight {
            if config.failure_statuses.contains(&response.status()) {
                let why = "failing statuses in a row";
                self.health_change(in_flight.stats(), why, BackendStats::record_failure);
            } else {
                let record =
                    |stats: &BackendStats, _: &HealthPolicy, now| stats.record_success(now);
                self.health_change(in_flight.stats(), "", record);
            }
        }
        let backend = self.backend_id().cloned().unwrap_or_else(|| "?".into());
        if let Some(token) = self.decision.token.take() {
            self.write_token(&mut response, &token);
        }
        tracing::debug!(
            backend = %backend,
            outcome = %self.decision.outcome,
            source = self.source().as_str(),
            status = response.status().as_u16(),
            "sticky"
        );
        let extensions = response.extensions_mut();
        extensions.insert(self.decision.outcome);
        extensions.insert(Placement {
            outcome: self.decision.outcome,
            backend,
            source: self.source(),
        });
        response.map(|body| ResponseBody::counted(body, in_flight))
    }

    fn write_token<B>(&self, response: &mut Response<B>, token: &str) {
        let config = &self.config;
        let headers = response.headers_mut();
        let mut sent = false;
        if let Some(name) = &config.token_header {
            if let Ok(value) = HeaderValue::from_str(token) {
                headers.insert(name.clone(), value);
                sent = true;
            }
        }
        if !self.issue_tokens || !config.send_cookie {
            return;
        }
        if !self.cookie_in_path {
            // The token header goes where the cookie would have: kept from
            // shared caches as the cookie would be.
            if sent && config.cache_private {
                make_private(headers);
            }
            return;
        }
        let cookies = &*self.cookies;
        if sets_any(headers, &cookies.names) {
            // The backend set (or expired) the cookie itself: its word is
            // the last, not overridden by a refresh in the same response.
            return;
        }
        let codec = &self.table.snapshot.config().tokens;
        let issued = self.decision.token_issued().unwrap_or(self.now);
        let max_age = codec.max_age(issued, self.now);
        for (name, attributes) in cookies.names.iter().zip(&cookies.attributes) {
            let mut value = String::with_capacity(name.len() + token.len() + attributes.len() + 24);
            value.push_str(name);
            value.push('=');
            value.push_str(token);
            value.push_str(attributes);
            if let Some(age) = max_age {
                let _ = write!(value, "; Max-Age={}", age.as_secs());
            }
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.append(SET_COOKIE, value);
            }
        }
        if config.cache_private {
            make_private(headers);
        }
    }
}

/// The path the client asked for, which the cookie's `Path` is about.
/// Under axum's `nest_service`, which hands the nested service the path
/// less its prefix, that is the `OriginalUri` (with the `axum` feature).
fn client_path<B>(request: &Request<B>) -> &str {
    #[cfg(feature = "axum")]
    if let Some(original) = request.extensions().get::<axum::extract::OriginalUri>() {
        return original.0.path();
    }
    request.uri().path()
}

/// Whether `headers` set a cookie under any of `names`.
fn sets_any(headers: &http::HeaderMap, names: &[String]) -> bool {
    headers.get_all(SET_COOKIE).iter().any(|value| {
        let value = value.as_bytes();
        let name = value.split(|&b| b == b'=').next().unwrap_or(value);
        names.iter().any(|n| n.as_bytes() == name.trim_ascii())
    })
}

/// Whether a refused connection is anywhere in an error's source chain.
fn connection_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    in_chain::<std::io::Error>(error)
        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// Marks a response that carries a cookie as private, unless it already is
/// (or may not be stored at all).
fn make_private(headers: &mut http::HeaderMap) {
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("private"));
        return;
    }
    let existing: Vec<String> = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty())
        .collect();
    let has = |name: &str| {
        existing.iter().any(|d| {
            d.split('=')
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
        })
    };
    if has("private") || has("no-store") {
        return;
    }
    let mut directives = vec!["private".to_owned()];
    directives.extend(existing.into_iter().filter(|d| {
        let name = d
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        name != "public" && name != "s-maxage"
    }));
    if let Ok(value) = HeaderValue::from_str(&directives.join(", ")) {
        headers.insert(CACHE_CONTROL, value);
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    ReqBody: 'static,
{
    type Output = Result<Response<ResponseBody<ResBody>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Rejected { error } => {
                    let error = error.take().expect("polled after completion");
                    tracing::debug!(outcome = %this.ctx.decision.outcome, source = this.ctx.source().as_str(), "sticky rejected");
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
                StateProj::Ready { service, request } => match ready!(service.poll_ready(cx)) {
                    Ok(()) => {
                        let request = request.take().expect("polled after completion");
                        let future = service.call(request);
                        this.state.set(State::Calling { future });
                    }
                    Err(error) => {
                        // Not ready: nothing was sent, so the request may
                        // go to the next candidate.
                        let request = request.take().expect("polled after completion");
                        match this.ctx.retry(error.into()) {
                            Ok(service) => this.state.set(State::Ready {
                                service,
                                request: Some(request),
                            }),
                            Err(error) => {
                                this.state.set(State::Done);
                                return Poll::Ready(Err(error));
                            }
                        }
                    }
                },
                StateProj::Calling { future } => match ready!(future.poll(cx)) {
                    Ok(response) => {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(this.ctx.finish(response)));
                    }
                    Err(error) => {
                        let error: BoxError = error.into();
                        let unsent = in_chain::<Unsent<ReqBody>>(&*error).and_then(Unsent::take);
                        let next = match unsent {
                            Some(request) => this.ctx.retry(error).map(|s| (s, request)),
                            None => Err(this.ctx.backend_error(error)),
                        };
                        match next {
                            Ok((service, request)) => this.state.set(State::Ready {
                                service,
                                request: Some(request),
                            }),
                            Err(error) => {
                                this.state.set(State::Done);
                                return Poll::Ready(Err(error));
                            }
                        }
                    }
                },
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}
