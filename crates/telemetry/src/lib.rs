//! Logging and metrics set-up shared by every Breakwater component.
//!
//! [`init_logging`] installs the global `tracing` subscriber (JSON for
//! production, human-readable for `up`); [`metrics_handle`] installs the
//! Prometheus recorder once per process and returns the handle `/metrics`
//! renders; [`serve_metrics`] serves it on a port of its own, for the gRPC
//! components run apart from the edge.

// Library code must not panic on input: failures are typed errors. Tests may
// unwrap (`.clippy.toml` allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    Json,
    /// Human-readable, for a terminal (`breakwater up`).
    Pretty,
}

/// Installs the global subscriber; `RUST_LOG` overrides `default_filter`.
/// A second call (tests) leaves the first subscriber in place.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _already_set = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// The process-wide Prometheus recorder's handle, installed on first call.
/// When another recorder is already installed (a test harness), a detached
/// recorder still renders this handle's view.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows only this handle's view");
            }
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
