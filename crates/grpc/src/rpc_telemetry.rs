//! One tower layer, on every gRPC client and server, that gives each call a
//! span (W3C trace context injected into or extracted from the metadata, so
//! one alert's way through the components is one trace) and the per-RPC
//! request count and duration metrics.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use breakwater_telemetry::context;
use tracing::Instrument as _;
use tracing::field::Empty;

/// Which end of a call the layer sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

impl Side {
    fn span_kind(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }

    /// The request counter and duration histogram of this side.
    fn metric_names(self) -> (&'static str, &'static str) {
        match self {
            Self::Client => {
                ("breakwater_grpc_client_requests_total", "breakwater_grpc_client_request_duration_seconds")
            }
            Self::Server => {
                ("breakwater_grpc_server_requests_total", "breakwater_grpc_server_request_duration_seconds")
            }
        }
    }
}

/// Layer for the clients (`client`) or servers (`server`) of `component`.
#[derive(Debug, Clone, Copy)]
pub struct RpcTelemetryLayer {
    component: &'static str,
    side: Side,
}

impl RpcTelemetryLayer {
    /// For the gRPC clients `component` uses to call others.
    pub fn client(component: &'static str) -> Self {
        Self { component, side: Side::Client }
    }

    /// For the gRPC server of `component`.
    pub fn server(component: &'static str) -> Self {
        Self { component, side: Side::Server }
    }
}

impl<S> tower::Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTelemetry { inner, component: self.component, side: self.side }
    }
}

/// See [`RpcTelemetryLayer`].
#[derive(Debug, Clone)]
pub struct RpcTelemetry<S> {
    inner: S,
    component: &'static str,
    side: Side,
}

/// Health checks, reflection and status polls happen every few seconds and
/// carry no alert: they get neither spans nor per-RPC metrics.
fn is_traced(path: &str) -> bool {
    path.starts_with("/breakwater.v1.") && !path.starts_with("/breakwater.v1.StatusService/")
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcTelemetry<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !is_traced(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let path = request.uri().path().to_owned();
        // "/breakwater.v1.DedupService/CheckBatch" → ("breakwater.v1.DedupService", "CheckBatch")
        let (service, method) = path.trim_start_matches('/').rsplit_once('/').unwrap_or((&path, ""));
        let span = rpc_span(self.side, self.component, service, method);
        match self.side {
            Side::Client => {
                breakwater_telemetry::context::inject(&span, request.headers_mut());
                if let Some(id) = context::current_request_id()
                    && let Ok(value) = http::HeaderValue::from_str(&id)
                {
                    request.headers_mut().insert(context::REQUEST_ID_HEADER, value);
                }
            }
            Side::Server => {
                context::continue_trace(&span, request.headers());
                if let Some(id) = context::request_id_from(request.headers()) {
                    span.record("request_id", id);
                }
            }
        }
        let (component, side, method) = (self.component, self.side, method.to_owned());
        let call = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let start = Instant::now();
                let result = call.await;
                let code = match &result {
                    Ok(response) => Some(status(response.headers())),
                    Err(_) => None,
                };
                record_rpc(side, component, method, code, start);
                result
            }
            .instrument(span),
        )
    }
}

/// The span of one call of `service`'s `method` at `side`, by `component`.
pub(crate) fn rpc_span(side: Side, component: &'static str, service: &str, method: &str) -> tracing::Span {
    tracing::info_span!(
        "grpc",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = side.span_kind(),
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = Empty,
        request_id = Empty,
        breakwater.component = component,
    )
}

/// Records a call's outcome on the current span (an RPC span) and in the
/// request count and duration metrics of `side`: `code` is the gRPC status,
/// `None` when no answer came (a transport failure).
pub(crate) fn record_rpc(
    side: Side,
    component: &'static str,
    method: String,
    code: Option<tonic::Code>,
    start: Instant,
) {
    let code = match code {
        Some(code) => {
            tracing::Span::current().record("rpc.grpc.status_code", code as i32);
            format!("{code:?}")
        }
        None => "transport".to_owned(),
    };
    if code != "Ok" {
        tracing::Span::current().record("otel.status_code", "error");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (requests, duration) = side.metric_names();
    metrics::counter!(requests, "component" => component, "rpc" => method.clone(), "code" => code).increment(1);
    metrics::histogram!(duration, "component" => component, "rpc" => method).record(elapsed);
}

/// The gRPC status of a response whose headers are in: failures come as
/// trailers-only responses with `grpc-status` in the headers; a success
/// carries it in trailers, so its absence here means OK.
fn status(headers: &http::HeaderMap) -> tonic::Code {
    headers.get("grpc-status").map_or(tonic::Code::Ok, |v| tonic::Code::from_bytes(v.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_breakwater_rpcs_are_traced() {
        assert!(is_traced("/breakwater.v1.DedupService/CheckBatch"));
        assert!(!is_traced("/breakwater.v1.StatusService/GetStatus"));
        assert!(!is_traced("/grpc.health.v1.Health/Check"));
        assert!(!is_traced("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
    }

    #[test]
    fn status_from_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status(&headers), tonic::Code::Ok);
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert_eq!(status(&headers), tonic::Code::Unavailable);
    }
}
