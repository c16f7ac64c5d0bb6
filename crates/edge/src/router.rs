//! Routes and handlers: `fn router(state) -> Router`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use breakwater_signal::Clock;
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::adapters::{Signals, kubernetes_event, prometheus};
use crate::auth::{Authenticator, Identity};
use crate::classify::{Classifier, Namespaces, PolicyError};
use crate::config::EdgeConfig;
use crate::error::EdgeError;
use crate::pipeline::{AlertResult, Components, Pipeline, PipelineParts};
use crate::serve::LimitEpisode;
use crate::submit::Summary;
use breakwater_grpc::ComponentHealth;
use breakwater_limiter::{Limits, Quota};

/// Everything a handler needs, shared: axum clones the state for every request, and a
/// clone of the pipeline and the component clients is a stack of boxed services.
#[derive(Clone)]
pub struct EdgeState(Arc<EdgeShared>);

impl std::ops::Deref for EdgeState {
    type Target = EdgeShared;

    fn deref(&self) -> &EdgeShared {
        &self.0
    }
}

/// What [`EdgeState`] shares.
#[derive(Clone)]
pub struct EdgeShared {
    pub(crate) pipeline: Pipeline,
    /// Which components the edge is degrading around, for `/readyz`.
    pub(crate) health: Arc<ComponentHealth>,
    pub(crate) components: Components,
    pub(crate) config: Arc<EdgeConfig>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) shutting_down: Arc<AtomicBool>,
    /// Permits for webhooks being processed (`edge.max_concurrent_requests`);
    /// taken after the body is read, so slow bodies cannot hold them.
    pub(crate) webhooks: Arc<Semaphore>,
    pub(crate) shed: Arc<LimitEpisode>,
    /// Bytes of webhooks in progress (`edge.max_in_flight_bytes`).
    pub(crate) budget: Arc<Budget>,
    pub(crate) body_timeouts: Arc<LimitEpisode>,
    pub(crate) classifier: Arc<Classifier>,
    /// Checks the webhooks' bearer tokens (`edge.auth`); `None`: no authentication.
    pub(crate) auth: Option<Arc<Authenticator>>,
}

impl EdgeState {
    /// `ratelimit_fallback` are the limits of the in-process limiter used while ratelimit is
    /// unavailable; `namespaces` is where the environment of a CR's namespace is read
    /// (`edge.classification.namespace_source`).
    ///
    /// # Errors
    /// When the priority policy (`edge.classification.priority_policy`) cannot be used.
    pub fn new(
        config: EdgeConfig,
        components: Components,
        clock: Arc<dyn Clock>,
        metrics: PrometheusHandle,
        ratelimit_fallback: Limits,
        namespaces: Namespaces,
    ) -> Result<Self, PolicyError> {
        let classifier = Arc::new(Classifier::new(&config.classification, namespaces)?);
        let health = ComponentHealth::new("edge");
        let parts = PipelineParts {
            clock: clock.clone(),
            dedup_fallback_window: Duration::from_secs(config.dedup_fallback_window_secs),
            ratelimit_fallback,
            health: health.clone(),
        };
        Ok(Self(Arc::new(EdgeShared {
            classifier,
            webhooks: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            shed: Arc::new(LimitEpisode::new("concurrency")),
            budget: Arc::new(Budget::new(config.max_in_flight_bytes)),
            body_timeouts: Arc::new(LimitEpisode::new("body_timeout")),
            pipeline: crate::pipeline::pipeline(&components, parts),
            health,
            components,
            config: Arc::new(config),
            clock,
            metrics,
            shutting_down: Arc::new(AtomicBool::new(false)),
            auth: None,
        })))
    }

    /// Webhooks must then carry a bearer token `auth` accepts, and the identity
    /// it proves is their rate-limit sender.
    #[must_use]
    pub fn with_auth(mut self, auth: Authenticator) -> Self {
        // Called while building, before the state is shared: nothing is copied.
        Arc::make_mut(&mut self.0).auth = Some(Arc::new(auth));
        self
    }

    /// Makes `/readyz` answer 503 from now on (graceful shutdown).
    pub fn mark_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
}

pub fn router(state: EdgeState) -> Router {
    let signals = Router::new()
        .route("/api/v1/signals/prometheus", post(prometheus_webhook))
        .route("/api/v1/signals/kubernetes-event", post(kubernetes_event_webhook))
        .layer(axum::middleware::from_fn(crate::layers::require_json))
        // Outermost on these routes, so a caller without a valid token gets 401 or 403 before
        // anything of its request is read or recorded. Only matched routes: a wrong method
        // costs no token review.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::layers::authenticate));
    let router = Router::new()
        .merge(signals)
        .route("/healthz", get(healthz))
        .route("/readyz", get(crate::health::readyz))
        // The probe paths of the gateway Breakwater replaces, so its probes keep working.
        .route("/health", get(healthz))
        .route("/ready", get(crate::health::readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { EdgeError::NotFound })
        .method_not_allowed_fallback(|| async { EdgeError::MethodNotAllowed });
    crate::layers::apply(router, &state.config).with_state(state)
}

/// The request body, read up to the configured limit (`DefaultBodyLimit`)
/// within `edge.body_read_timeout_ms`, and decoded when it is gzip.
pub struct SignalBody(Bytes);

impl FromRequest<EdgeState> for SignalBody {
    type Rejection = EdgeError;

    async fn from_request(req: Request, state: &EdgeState) -> Result<Self, Self::Rejection> {
        let limit = state.config.body_limit_bytes;
        // Refused before the body is polled, so hyper never sends `100 Continue` for it.
        let announced = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if announced.is_some_and(|len| len > limit as u64) {
            return Err(EdgeError::PayloadTooLarge { limit });
        }
        let gzip = match req.headers().get(header::CONTENT_ENCODING).map(|v| v.to_str().map(str::trim)) {
            None => false,
            Some(Ok(e)) if e.eq_ignore_ascii_case("identity") || e.is_empty() => false,
            Some(Ok(e)) if e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("x-gzip") => true,
            Some(_) => return Err(EdgeError::UnsupportedEncoding),
        };
        let deadline = Duration::from_millis(state.config.body_read_timeout_ms);
        let read = match tokio::time::timeout(deadline, Bytes::from_request(req, state)).await {
            Ok(read) => read,
            Err(_) => {
                state.body_timeouts.hit("a request body did not arrive in time");
                return Err(EdgeError::BodyTimeout);
            }
        };
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(BytesRejection::FailedToBufferBody(e))
                if std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("length limit")) =>
            {
                return Err(EdgeError::PayloadTooLarge { limit });
            }
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(EdgeError::PayloadTooLarge { limit }),
            Err(e) => return Err(EdgeError::BadRequest(format!("failed to read request body: {}", e.body_text()))),
        };
        if gzip { gunzip(&bytes, state.config.decoded_body_limit_bytes).map(Self) } else { Ok(Self(bytes)) }
    }
}

/// Decodes a gzip body, refusing one that decodes to more than `limit` bytes
/// (it stops reading there, so a small bomb costs at most `limit`).
fn gunzip(body: &[u8], limit: usize) -> Result<Bytes, EdgeError> {
    use std::io::Read as _;
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut decoded)
        .map_err(|_| EdgeError::BadRequest("the gzip body cannot be decoded".into()))?;
    if decoded.len() > limit {
        return Err(EdgeError::DecodedTooLarge { limit });
    }
    Ok(Bytes::from(decoded))
}

/// Who sent the request (the rate-limit key): the authenticated [`Identity`] when
/// `edge.auth` is on, else the address of [`sender`].
pub struct Sender(String);

impl FromRequestParts<EdgeState> for Sender {
    type Rejection = EdgeError;

    async fn from_request_parts(parts: &mut Parts, state: &EdgeState) -> Result<Self, Self::Rejection> {
        if let Some(identity) = parts.extensions.get::<Identity>() {
            return Ok(Self(identity.sender()));
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
        let forwarded: Vec<&str> =
            parts.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
        Ok(Self(sender(peer, &forwarded, &state.config.trusted_proxies)))
    }
}

/// The peer address, unless the peer is one of `trusted` proxies: then the right-most
/// `X-Forwarded-For` hop that is not one. Each trusted proxy appended the address it saw, so
/// hops are read from the right; everything left of the first untrusted hop was written by
/// the client and could be forged to get a fresh rate-limit bucket. A hop that is not an
/// address ends the walk at the last trusted one.
fn sender(peer: Option<IpAddr>, forwarded: &[&str], trusted: &[ipnet::IpNet]) -> String {
    let Some(mut sender) = peer else {
        return "unknown".to_owned();
    };
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    // Right to left: the last header first, each from its end.
    let hops = forwarded.iter().rev().flat_map(|header| header.rsplit(',')).map(str::trim).filter(|h| !h.is_empty());
    for hop in hops {
        if !is_trusted(&sender) {
            break;
        }
        match hop.parse::<IpAddr>() {
            Ok(ip) => sender = ip,
            Err(_) => break,
        }
    }
    sender.to_string()
}

/// The success body: an overall status and one result per alert, in order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalsResponse {
    /// `created` when at least one CR was created, `rejected` when every alert was
    /// rejected, else `accepted`.
    pub status: &'static str,
    pub message: String,
    pub results: Vec<AlertResult>,
}

/// How many times a webhook's expanded signals are charged to the in-flight budget: the
/// signals, and each component call's encoded request and its decoded copy, which overlap.
const SIGNAL_COPIES: usize = 4;

/// The byte budget of webhooks in progress, in KiB permits; see `edge.max_in_flight_bytes`.
pub(crate) struct Budget {
    permits: Arc<Semaphore>,
    total_kib: usize,
    episode: LimitEpisode,
}

impl Budget {
    fn new(bytes: usize) -> Self {
        let total_kib = bytes.div_ceil(1024).clamp(1, u32::MAX as usize);
        Self { permits: Arc::new(Semaphore::new(total_kib)), total_kib, episode: LimitEpisode::new("memory") }
    }

    /// Reserves the bytes a webhook of `body` bytes whose signals take `expanded` bytes holds
    /// while it is processed, or answers why not. A webhook larger than the whole budget is
    /// charged the whole budget, so it runs alone rather than never.
    pub(crate) fn reserve(&self, body: usize, expanded: usize) -> Result<tokio::sync::OwnedSemaphorePermit, EdgeError> {
        let bytes = body.saturating_add(expanded.saturating_mul(SIGNAL_COPIES));
        let kib = bytes.div_ceil(1024).clamp(1, self.total_kib);
        let kib = u32::try_from(kib).unwrap_or(u32::MAX);
        self.permits.clone().try_acquire_many_owned(kib).map_err(|_| {
            self.episode.hit("edge.max_in_flight_bytes of webhooks in progress; shedding with 503");
            EdgeError::OverBudget
        })
    }
}

async fn prometheus_webhook(State(state): State<EdgeState>, sender: Sender, SignalBody(body): SignalBody) -> Response {
    let source = prometheus::SOURCE_TYPE;
    // Read and measured before the alerts are expanded, so what they will take is reserved first.
    let parsed = match prometheus::read(&body, &state.config.caps()) {
        Ok(parsed) => parsed,
        Err(e) => return process(&state, sender, source, Err(e)).await,
    };
    let _bytes = match state.budget.reserve(body.len(), parsed.expanded_bytes()) {
        Ok(permit) => permit,
        Err(e) => return e.into_response(),
    };
    let signals = parsed.signals(state.clock.now(), &state.config.fingerprint, &state.config.namespace_labels);
    process(&state, sender, source, Ok(signals)).await
}

async fn kubernetes_event_webhook(
    State(state): State<EdgeState>,
    sender: Sender,
    SignalBody(body): SignalBody,
) -> Response {
    let _bytes = match state.budget.reserve(body.len(), kubernetes_event::expanded_bytes(&body)) {
        Ok(permit) => permit,
        Err(e) => return e.into_response(),
    };
    let caps = state.config.caps();
    // One event is the whole body: an event that cannot be a signal is a 400.
    let signals = kubernetes_event::parse_capped(&body, state.clock.now(), &state.config.fingerprint, &caps)
        .map(|signals| Signals::unshared(signals.into_iter().map(Ok).collect()));
    process(&state, sender, kubernetes_event::SOURCE_TYPE, signals).await
}

async fn process(
    state: &EdgeState,
    Sender(sender): Sender,
    source: &'static str,
    signals: Result<Signals, EdgeError>,
) -> Response {
    let signals = match signals {
        Ok(signals) => signals,
        Err(e) => {
            metrics::counter!("breakwater_signals_rejected_total", "source" => source, "reason" => "invalid")
                .increment(1);
            return e.into_response();
        }
    };
    match crate::submit::submit(state, sender, source, signals).await {
        Ok(submitted) => respond(submitted.results, submitted.quota),
        Err(e) => e.into_response(),
    }
}

fn respond(results: Vec<AlertResult>, quota: Option<Quota>) -> Response {
    let summary = Summary::of(&results);
    let status = match summary.status {
        "created" => StatusCode::CREATED,
        // 2xx all the same: the sender must not retry what can never be recorded.
        "rejected" => StatusCode::OK,
        _ => StatusCode::ACCEPTED,
    };
    let mut response =
        (status, Json(SignalsResponse { status: summary.status, message: summary.message, results })).into_response();
    if let Some(quota) = quota {
        crate::error::insert_rate_limit_headers(response.headers_mut(), &quota);
    }
    response
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    timestamp: String,
}

async fn healthz(State(state): State<EdgeState>) -> Json<Health> {
    let timestamp = jiff::Timestamp::from_millisecond(state.clock.now()).map(|t| t.to_string()).unwrap_or_default();
    Json(Health { status: "healthy", timestamp })
}

async fn metrics(State(state): State<EdgeState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

#[cfg(test)]
mod tests;
