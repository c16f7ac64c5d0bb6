//! The HTTP edge: takes Alertmanager and Kubernetes-event webhooks, turns them
//! into signals and fans each batch through ratelimit → dedup → storm →
//! crd-writer.
//!
//! # Layout
//! - [`router`] — `fn router(state) -> Router`, the handlers and the response body.
//! - [`layers`] — the middleware stack, one `ServiceBuilder`.
//! - [`error`] — [`EdgeError`], every HTTP error as RFC 7807.
//! - [`adapters`] — payload → signals (Prometheus webhook v4, Kubernetes events).
//! - [`pipeline`] — the tower stages calling the components (tonic clients over
//!   a channel in split mode, or directly in `breakwater up`).
//! - [`health`] — `/readyz`.
//! - [`config`] — [`EdgeConfig`].
//!
//! Entry point: [`run`].

// Library code must not panic on input: failures are typed errors. Tests may
// unwrap (`.clippy.toml` allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod adapters;
pub mod completed;
pub mod config;
pub mod error;
pub mod health;
pub mod layers;
pub mod pipeline;
pub mod router;

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;

pub use config::{ComponentUrls, EdgeConfig};
pub use error::EdgeError;
pub use pipeline::{AlertOutcome, AlertResult, Components};
pub use router::{EdgeState, router};

/// Serves the edge on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish.
///
/// # Errors
/// When the listener fails.
pub async fn run(
    state: EdgeState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let on_shutdown = state.clone();
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    // Small responses: without TCP_NODELAY, Nagle and the client's delayed ACK
    // add up to 40 ms to a response written in more than one piece.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(cause = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            on_shutdown.mark_shutting_down();
        })
        .await
}
