//! The HTTP edge: takes Alertmanager and Kubernetes-event webhooks, turns them
//! into signals and fans each batch through ratelimit → dedup → storm →
//! crd-writer.
//!
//! # Layout
//! - [`router`] — `fn router(state) -> Router`, the handlers and the response body.
//! - [`layers`] — the middleware stack, one `ServiceBuilder`.
//! - [`error`] — [`EdgeError`], every HTTP error as RFC 7807.
//! - [`auth`] — [`Authenticator`]: a bearer token to an [`auth::Identity`]
//!   (static tokens, or Kubernetes TokenReview and SubjectAccessReview).
//! - [`adapters`] — payload → signals (Prometheus webhook v4, Kubernetes events).
//! - [`classify`] — each alert's environment (namespace label, overrides ConfigMap or the
//!   `environments` table, then its own label), priority (a Rego policy) and remediation path.
//! - [`pipeline`] — the awaited steps calling the components (tonic clients over
//!   a channel in split mode, or directly in `breakwater up`).
//! - [`serve`] — the accept loop: connection cap, header timeout, bounded drain.
//! - `submit` — one batch through the pipeline, whichever route it came by.
//! - [`health`] — `/readyz`.
//! - [`config`] — [`EdgeConfig`].
//!
//! Entry point: [`run`].

// Library code must not panic on input: failures are typed errors. Tests may
// unwrap (`.clippy.toml` allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod adapters;
pub mod auth;
pub mod classify;
pub mod completed;
pub mod config;
pub mod error;
pub mod health;
pub mod ingest;
pub mod layers;
pub mod pipeline;
pub mod router;
pub mod serve;
mod submit;

use std::future::Future;

use tokio::net::TcpListener;

pub use auth::Authenticator;
pub use config::{AuthConfig, AuthMode, ComponentUrls, EdgeConfig, KubernetesAuthConfig, NamespaceSource};
pub use error::EdgeError;
pub use ingest::run_ingest;
pub use pipeline::{AlertOutcome, AlertResult, Components};
pub use router::{EdgeState, router};

/// Serves the edge on `listener` until `shutdown` resolves: then `/readyz`
/// fails, no connection is accepted, idle ones close, and in-flight requests
/// get `edge.shutdown_timeout_ms` to finish before their connections close.
///
/// # Errors
/// None today; kept for callers that propagate serving failures.
/// With `tls` (`[tls]`), it serves HTTPS only.
pub async fn run(
    state: EdgeState,
    listener: TcpListener,
    tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let on_shutdown = state.clone();
    let limits = serve::ConnectionLimits::of(&state.config);
    let app = router(state);
    serve::serve(app, listener, limits, tls, async move {
        shutdown.await;
        on_shutdown.mark_shutting_down();
    })
    .await;
    Ok(())
}
