//! The edge's middleware, in one stack read top to bottom (outermost first).

use std::time::{Duration, Instant};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower::{BoxError, ServiceBuilder};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing::field::Empty;

use crate::auth::{AuthError, bearer_token};
use crate::config::EdgeConfig;
use crate::error::{EdgeError, render_problems};
use crate::router::EdgeState;
use crate::serve::ProbeOnly;

/// The configured body limit, for the 413 detail.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

pub fn apply<S: Clone + Send + Sync + 'static>(router: Router<S>, config: &EdgeConfig) -> Router<S> {
    let stack = ServiceBuilder::new()
        // An id for every request (or the caller's), echoed as X-Request-Id.
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        // One span per request carrying the id; inside request-id so it can read it.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(|response: &Response, _: Duration, span: &Span| {
                    span.record("http.response.status_code", response.status().as_u16());
                    if response.status().is_server_error() {
                        span.record("otel.status_code", "error");
                    }
                })
                // Failures are logged once by render_problems (and outages once by ComponentHealth).
                .on_failure(()),
        )
        // gRPC calls made for this request pass its id on to the components' logs.
        .layer(middleware::from_fn(pass_on_request_id))
        // Renders every EdgeError as RFC 7807 with the request id; must be inside request-id.
        .layer(middleware::from_fn(render_problems))
        .layer(middleware::from_fn(record_http_metrics))
        // Inside render_problems, so these refusals get RFC 7807 bodies too.
        .layer(middleware::from_fn(probes_only_when_over_capacity))
        .layer(middleware::from_fn(limit_headers))
        // Turns a timeout into an EdgeError; must wrap it. The webhook concurrency
        // limit is not a layer: it is taken in the handler once the body is read,
        // so probes, /metrics and slow bodies never hold a permit.
        .layer(HandleErrorLayer::new(handle_overload))
        .timeout(Duration::from_millis(config.request_timeout_ms))
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(axum::Extension(BodyLimit(config.body_limit_bytes)));
    router.layer(stack)
}

/// Probes and scrapes: never behind a webhook limit, never traced at INFO.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/health" | "/ready" | "/metrics")
}

/// The request's span: the root of the alert's trace, or a child of the
/// caller's when it sent a W3C `traceparent`. Probes and scrapes get a debug
/// span, which is neither exported nor logged by default.
fn request_span(request: &Request) -> Span {
    let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
    let (method, path) = (request.method(), request.uri().path());
    if is_probe(path) {
        return tracing::debug_span!("http", %method, path, request_id = id);
    }
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
    let span = tracing::info_span!(
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route,
        url.path = path,
        http.response.status_code = Empty,
        request_id = id,
        breakwater.component = "edge",
    );
    breakwater_telemetry::context::continue_trace(&span, request.headers());
    span
}

async fn pass_on_request_id(request: Request, next: Next) -> Response {
    match breakwater_telemetry::context::request_id_from(request.headers()).map(str::to_owned) {
        Some(id) => breakwater_telemetry::context::with_request_id(id, next.run(request)).await,
        None => next.run(request).await,
    }
}

async fn handle_overload(err: BoxError) -> EdgeError {
    if err.is::<tower::timeout::error::Elapsed>() { EdgeError::Timeout } else { EdgeError::Internal(err.to_string()) }
}

/// Rejects bodies that are not JSON; a missing Content-Type is accepted, as
/// the reference gateway does, because some senders omit it.
pub async fn require_json(request: Request, next: Next) -> Response {
    if let Some(value) = request.headers().get(header::CONTENT_TYPE) {
        let Some(mime) = value.to_str().ok().and_then(|v| v.parse::<mime::Mime>().ok()) else {
            return EdgeError::BadRequest("Invalid Content-Type header format".into()).into_response();
        };
        if mime.essence_str() != "application/json" {
            return EdgeError::UnsupportedMediaType.into_response();
        }
        // JSON is UTF-8 (RFC 8259): another charset would be misread, not converted.
        if mime
            .get_param(mime::CHARSET)
            .is_some_and(|c| !matches!(c.as_str().to_ascii_lowercase().as_str(), "utf-8" | "utf8"))
        {
            return EdgeError::UnsupportedCharset.into_response();
        }
    }
    next.run(request).await
}

/// Lets a webhook through only with a bearer token the state's authenticator
/// accepts, handing the identity on as an extension (the rate-limit sender,
/// see `router::Sender`); with no authenticator configured, every request passes.
pub async fn authenticate(State(state): State<EdgeState>, mut request: Request, next: Next) -> Response {
    let Some(auth) = state.auth.clone() else {
        return next.run(request).await;
    };
    match auth.authenticate(bearer_token(request.headers())).await {
        Ok(identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Err(e) => {
            metrics::counter!("breakwater_auth_failures_total", "reason" => e.metric_label()).increment(1);
            // A caller's own mistake: not an error of the edge (an unavailable review is
            // logged once, with its cause, by render_problems).
            if let AuthError::Forbidden { identity, .. } = &e {
                tracing::info!(%identity, "webhook refused: the caller may not post signals");
            } else {
                tracing::debug!(reason = e.metric_label(), "webhook refused");
            }
            EdgeError::from(e).into_response()
        }
    }
}

/// Request rate, errors and duration per route. Labels are bounded: an
/// unknown path is `unmatched` and a non-standard method `other`, so odd
/// requests cannot grow the series count.
async fn record_http_metrics(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = method_label(request.method());
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("breakwater_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("breakwater_http_request_duration_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Header fields a request may carry, and their total size (names and values).
/// hyper's own limits are set higher (see [`crate::serve`]), so a request
/// between the two gets a 431 with an RFC 7807 body.
pub const HEADER_FIELDS_LIMIT: usize = 100;
pub const HEADER_BYTES_LIMIT: usize = 16 * 1024;

async fn limit_headers(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let bytes: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if headers.len() > HEADER_FIELDS_LIMIT || bytes > HEADER_BYTES_LIMIT {
        return EdgeError::HeadersTooLarge { limit: HEADER_BYTES_LIMIT, count: HEADER_FIELDS_LIMIT }.into_response();
    }
    next.run(request).await
}

/// A connection accepted past `edge.max_connections` serves probes only.
async fn probes_only_when_over_capacity(request: Request, next: Next) -> Response {
    if request.extensions().get::<ProbeOnly>().is_some() && !is_probe(request.uri().path()) {
        return EdgeError::Overloaded.into_response();
    }
    next.run(request).await
}
