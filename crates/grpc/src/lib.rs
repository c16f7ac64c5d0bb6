//! The serving and dialing every Breakwater gRPC component shares.
//!
//! [`serve`] runs one component's service next to `grpc.health.v1`, server
//! reflection and `breakwater.v1.StatusService` (fed by a [`ComponentHealth`])
//! until shutdown; [`connect_lazy`] makes the client channel the edge uses.
//! Keeping both here gives the components one shape and `up` and split mode
//! one code path.

// Library code must not panic on input: failures are typed errors. Tests may
// unwrap (`.clippy.toml` allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod health;
mod rpc_telemetry;

pub use health::ComponentHealth;
pub use rpc_telemetry::{RpcTelemetry, RpcTelemetryLayer};

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};

/// Serving or dialing failed.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("grpc transport")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection set-up")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("invalid endpoint {0:?}")]
    Endpoint(String),
}

/// A generated tonic server (`XServiceServer<T>`), as [`serve`] needs it.
pub trait GrpcService:
    tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GrpcService for S where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The largest gRPC message a component sends or accepts. One webhook travels
/// as one message per component, and a webhook that fits the edge's body limit
/// must not fail on a message limit. tonic's default, 4 MiB, was exceeded by
/// 20,000 tiny alerts in an 80 KB webhook; at the default 512 KiB body limit the
/// worst case (about 175,000 empty alerts, each a signal of some 250 bytes)
/// stays far below this.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Like [`serve_with_status`], with a status that never reports a problem.
///
/// # Errors
/// When the transport fails.
pub async fn serve<S>(
    service: S,
    component: &'static str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GrpcError>
where
    S: GrpcService,
{
    serve_with_status(service, ComponentHealth::new(component), listener, shutdown).await
}

/// Serves `service` on `listener`, with health (reported SERVING for it),
/// reflection and `status`, until `shutdown` resolves; in-flight calls then finish.
/// Every call gets a span continuing the caller's trace, and per-RPC metrics,
/// under the component `status` belongs to.
///
/// # Errors
/// When the transport fails.
pub async fn serve_with_status<S>(
    service: S,
    status: std::sync::Arc<ComponentHealth>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GrpcError>
where
    S: GrpcService,
{
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<S>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(breakwater_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let component = status.component();
    let status = breakwater_proto::v1::status_service_server::StatusServiceServer::new(health::StatusGrpc(status));
    Server::builder()
        .layer(RpcTelemetryLayer::server(component))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(status)
        .add_service(service)
        // Without TCP_NODELAY, a response's header, data and trailer frames can
        // wait for the client's delayed ACK (40 ms).
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await?;
    Ok(())
}

/// A channel to `uri` (`http://host:port`) that connects on first use and
/// reconnects by itself, so a component that starts later or restarts is
/// picked up without restarting the edge.
///
/// # Errors
/// When `uri` is not a valid endpoint.
pub fn connect_lazy(uri: &str, timeout: Duration) -> Result<Channel, GrpcError> {
    let endpoint = Endpoint::from_shared(uri.to_owned()).map_err(|_| GrpcError::Endpoint(uri.to_owned()))?;
    Ok(endpoint
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy())
}

/// A channel to another component whose calls carry `caller`'s trace context
/// and count in its client metrics.
pub type TracedChannel = RpcTelemetry<Channel>;

/// Wraps `channel` for calls made by `caller`.
pub fn traced(channel: Channel, caller: &'static str) -> TracedChannel {
    tower::Layer::layer(&RpcTelemetryLayer::client(caller), channel)
}
