//! Logs, traces and metrics set-up shared by every Breakwater component.
//!
//! # Layout
//! - [`init`] installs the global `tracing` subscriber: log lines (JSON for
//!   production, human-readable for `up`) with the trace and span id of the
//!   span they happen in, and, when an OTLP endpoint is configured, span
//!   export with one `service.name` per component ([`otlp`]).
//! - [`context`] carries W3C trace context in HTTP headers and gRPC metadata.
//! - [`catalogue`] lists every metric; [`metrics_handle`] installs the
//!   Prometheus recorder and [`serve_metrics`] serves `/metrics` for the gRPC
//!   components run apart from the edge.
//! - [`redact`](fn@redact) keeps secrets and annotation bodies out of logs and error bodies.

// Library code must not panic on input: failures are typed errors. Tests may
// unwrap (`.clippy.toml` allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod catalogue;
pub mod context;
mod logfmt;
pub mod otlp;
mod redact;

use std::collections::HashMap;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};

pub use catalogue::{METRICS, Metric, MetricKind};
pub use redact::{redact, redact_endpoint, redact_url_credentials};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    Json,
    /// Human-readable, for a terminal (`breakwater up`).
    Pretty,
}

/// The `[telemetry]` config section. The standard `OTEL_*` variables
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
/// `OTEL_BSP_*`, …) override it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC endpoint spans are exported to, e.g. `http://jaeger-collector:4317`.
    /// Unset (and no `OTEL_EXPORTER_OTLP_*ENDPOINT`): no span export.
    pub otlp_endpoint: Option<String>,
    /// PEM CA bundle that signed an `https://` collector's certificate. Unset:
    /// the system's trusted CAs.
    pub otlp_ca_file: Option<std::path::PathBuf>,
    /// Each component reports as `<prefix>-<component>`. Default `breakwater`.
    pub service_name_prefix: String,
    /// Fraction of new traces sampled (parent-based: a caller's decision is
    /// kept). Unset: all, unless `OTEL_TRACES_SAMPLER` says otherwise.
    pub sample_ratio: Option<f64>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_ca_file: None,
            service_name_prefix: "breakwater".to_owned(),
            sample_ratio: None,
        }
    }
}

impl TelemetryConfig {
    /// # Errors
    /// A message naming the bad key and value.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            let endpoint = redact::redact_endpoint(endpoint);
            return Err(format!("telemetry.otlp_endpoint {endpoint:?} must be an http:// or https:// URL"));
        }
        if let Some(ratio) = self.sample_ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            return Err(format!("telemetry.sample_ratio {ratio} must be between 0.0 and 1.0"));
        }
        if self.service_name_prefix.trim().is_empty() {
            return Err("telemetry.service_name_prefix must not be empty".to_owned());
        }
        Ok(())
    }
}

/// Telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
}

/// The installed telemetry; [`Telemetry::shutdown`] exports what is left.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops span export (off the async threads: it blocks).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Installs the global subscriber for a process running `components` (the
/// first is where spans without a component go). `RUST_LOG` overrides
/// `default_filter` for log lines; spans of Breakwater's own crates are
/// exported at `info` and above whatever the log filter.
///
/// Must run inside a Tokio runtime when spans are exported. A second call
/// (tests) leaves the first subscriber in place.
///
/// # Errors
/// When the OTLP exporter cannot be built (say, a malformed endpoint).
pub fn init(
    format: LogFormat,
    default_filter: &str,
    config: &TelemetryConfig,
    components: &[&'static str],
    env: &HashMap<String, String>,
) -> Result<Telemetry, TelemetryError> {
    let plan = otlp::plan(config, components, env);
    let provider = plan.as_ref().map(otlp::provider).transpose()?;
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("breakwater"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(Targets::new().with_target("breakwater", tracing::Level::INFO))
    });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let dispatch = logfmt::DispatchSlot::default();
    let lines = fmt::layer().with_writer(std::io::stderr).with_ansi(false);
    let lines = match format {
        LogFormat::Json => {
            let inner = fmt::format().json().flatten_event(true).with_current_span(true).with_span_list(false);
            lines
                .json()
                .event_format(logfmt::WithTraceIds { inner, json: true, dispatch: dispatch.clone() })
                .with_filter(filter)
                .boxed()
        }
        LogFormat::Pretty => {
            let inner = fmt::format().compact().with_ansi(false);
            lines
                .event_format(logfmt::WithTraceIds { inner, json: false, dispatch: dispatch.clone() })
                .with_filter(filter)
                .boxed()
        }
    };
    let installed =
        tracing_subscriber::registry().with(lines).with(spans).with(logfmt::LogContext(dispatch)).try_init().is_ok();
    if let Some(plan) = plan.filter(|_| installed) {
        let endpoint = redact::redact_endpoint(&plan.endpoint);
        tracing::info!(%endpoint, "exporting traces with OTLP/gRPC");
    }
    Ok(Telemetry { provider: provider.filter(|_| installed) })
}

/// Seconds, from half a millisecond (a Redis script) to ten seconds (a
/// Kubernetes call being retried).
const DURATION_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process-wide Prometheus recorder's handle, installed on first call,
/// with every metric of the [`catalogue`] described. When another recorder is
/// already installed (a test harness), a detached recorder still renders
/// this handle's view.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Buckets make histograms real Prometheus histograms (quantiles across instances).
            let builder = PrometheusBuilder::new();
            let builder = match builder.set_buckets(DURATION_BUCKETS) {
                Ok(with_buckets) => with_buckets,
                Err(e) => {
                    tracing::warn!(cause = %e, "histogram buckets rejected; durations are exported as summaries");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows only this handle's view");
            }
            catalogue::describe_all();
            handle
        })
        .clone()
}

/// Serves `GET /metrics` (Prometheus text) on `listener` until `shutdown`.
///
/// # Errors
/// When the listener fails.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = metrics_handle();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = handle.render();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
