//! The serving and dialing every Breakwater gRPC component shares.
//!
//! A component's routes are its service next to `grpc.health.v1` and
//! `breakwater.v1.StatusService` (fed by a [`ComponentHealth`]). [`serve`]
//! takes calls for them from an [`Incoming`]: a TCP listener in split mode,
//! where reflection is served too, or, in `breakwater up`, an [`InProcess`]
//! handed to the edge: a [`Transport`] that calls the routes in this process
//! (no socket, no HTTP/2) and the component's service implementation, which
//! the edge's [`DedupClient`] and the others call without encoding anything.
//! [`Transport::replicas`] is the split-mode transport, and [`client`] wraps
//! either in the layers every call to a component gets.
//! Keeping both here gives the components one shape, and makes the transport
//! the only thing `up` and split mode compose differently.

// Library code must not panic on input: failures are typed errors. Tests may
// unwrap (`.clippy.toml` allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod clients;
mod health;
mod rpc_telemetry;
pub mod tls;
mod transport;

pub use clients::{CrdWriterClient, DedupClient, Local, LocalService, RateLimitClient, StormClient};
pub use health::{
    ComponentHealth, StoreHealth, failed_mid_call, is_store_unavailable, nothing_applied, store_unavailable,
};
pub use rpc_telemetry::{RpcTelemetry, RpcTelemetryLayer};
pub use transport::{Deadline, Idempotent, TracedTransport, Transport, client};

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::server::NamedService;
use tonic::service::Routes;
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
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
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

/// The most items (queries, bindings, counts, signals) one call to a
/// component may carry: the most writes `crd_writer.max_batch` can be set to,
/// so every webhook the edge takes fits. Components refuse more with
/// `INVALID_ARGUMENT` before they record anything.
pub const MAX_BATCH_ITEMS: usize = 2_000_000;

/// Whether a split-mode component serves gRPC server reflection
/// (`listen.grpc_reflection`), which lists every service and message to anyone
/// who can reach the port: handy with `grpcurl` on a workstation, a map for
/// an attacker in a cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reflection {
    /// Only on a loopback listener (127.0.0.1, ::1): development machines,
    /// never a pod listening on 0.0.0.0. `breakwater up` has no gRPC listener.
    #[default]
    Auto,
    On,
    Off,
}

impl Reflection {
    /// Whether a listener on `addr` serves reflection.
    pub fn serves_on(self, addr: Option<SocketAddr>) -> bool {
        match self {
            Self::Auto => addr.is_some_and(|a| a.ip().is_loopback()),
            Self::On => true,
            Self::Off => false,
        }
    }
}

/// Where a component takes its calls.
#[derive(Debug)]
pub enum Incoming {
    /// Split mode: gRPC over HTTP/2 on this listener.
    Tcp(TcpListener, Reflection),
    /// Split mode with TLS (`[tls]`): gRPC over HTTP/2 over TLS on this listener.
    Tls(TcpListener, Box<tonic::transport::ServerTlsConfig>, Reflection),
    /// `breakwater up`: the component goes to this channel once its routes
    /// are built ([`InProcess`]); the caller calls it directly.
    InProcess(oneshot::Sender<InProcess>, Option<LocalService>),
}

/// A component of this process, as its caller gets it: its routes (health
/// and status checks) and its service implementation (its calls).
#[derive(Debug)]
pub struct InProcess {
    pub transport: Transport,
    /// `None` when the component did not offer it ([`Incoming::with_local`]).
    pub local: Option<LocalService>,
}

impl Incoming {
    /// An in-process incoming, and where its component will arrive. The
    /// sender is dropped without a component when it fails to start.
    pub fn in_process() -> (Self, oneshot::Receiver<InProcess>) {
        let (handoff, component) = oneshot::channel();
        (Self::InProcess(handoff, None), component)
    }

    /// In process, the service implementation the caller calls, built by
    /// `local`; over the network, nothing changes.
    #[must_use]
    pub fn with_local(self, local: impl FnOnce() -> LocalService) -> Self {
        match self {
            Self::InProcess(handoff, _) => Self::InProcess(handoff, Some(local())),
            other => other,
        }
    }

    /// The listener's address; `None` in process.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(listener, _) | Self::Tls(listener, _, _) => listener.local_addr().ok(),
            Self::InProcess(..) => None,
        }
    }
}

impl From<TcpListener> for Incoming {
    fn from(listener: TcpListener) -> Self {
        Self::Tcp(listener, Reflection::Auto)
    }
}

/// Like [`serve_with_status`], with a status that never reports a problem.
///
/// # Errors
/// When the transport fails.
pub async fn serve<S>(
    service: S,
    component: &'static str,
    incoming: impl Into<Incoming>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GrpcError>
where
    S: GrpcService,
{
    serve_with_status(service, ComponentHealth::new(component), incoming, shutdown).await
}

/// Serves `service` with health (reported SERVING for it) and `status` until
/// `shutdown` resolves; on TCP, with reflection too as [`Reflection`] says, and in-flight calls then
/// finish. Every call gets a span continuing the caller's trace, and per-RPC
/// metrics, under the component `status` belongs to.
///
/// In process, the routes are handed over and this waits for `shutdown`: the
/// caller stops calling first (`up` stops the edge before its components).
///
/// # Errors
/// When the transport fails.
pub async fn serve_with_status<S>(
    service: S,
    status: std::sync::Arc<ComponentHealth>,
    incoming: impl Into<Incoming>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GrpcError>
where
    S: GrpcService,
{
    let component = status.component();
    let routes = routes(service, status).await;
    let incoming = incoming.into();
    let addr = incoming.local_addr();
    let (listener, tls, reflection) = match incoming {
        Incoming::Tcp(listener, reflection) => (listener, None, reflection),
        Incoming::Tls(listener, tls, reflection) => (listener, Some(*tls), reflection),
        Incoming::InProcess(handoff, local) => {
            // A dropped receiver means no one will call; the component still runs until
            // shutdown, like a server nobody connects to.
            let _ = handoff.send(InProcess { transport: Transport::in_process(routes, component), local });
            shutdown.await;
            return Ok(());
        }
    };
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let routes = if reflection.serves_on(addr) {
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(breakwater_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        routes.add_service(reflection)
    } else {
        routes
    };
    let (stopping, stopped) = oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let serve = server
        .layer(RpcTelemetryLayer::server(component))
        .add_routes(routes)
        // Without TCP_NODELAY, a response's header, data and trailer frames can
        // wait for the client's delayed ACK (40 ms).
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), signal);
    // The graceful drain waits for every client to close its connection: one that
    // keeps it open, or half-sent a call, would hold the process for good.
    let deadline = async move {
        if stopped.await.is_ok() {
            tokio::time::sleep(DRAIN_DEADLINE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = serve => served?,
        () = deadline => tracing::warn!(
            component,
            deadline_secs = DRAIN_DEADLINE.as_secs(),
            "connections still open at the drain deadline after shutdown; closing them"
        ),
    }
    Ok(())
}

/// After shutdown, how long a split-mode component waits for its calls in
/// progress and its clients' connections before it stops anyway. The edge's
/// calls have their own deadline (`edge.component_timeout_ms`, 2 s by default).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// The routes of one component, whatever carries the calls: `service`, health
/// (SERVING for it) and `breakwater.v1.StatusService` on `status`.
async fn routes<S>(service: S, status: std::sync::Arc<ComponentHealth>) -> Routes
where
    S: GrpcService,
{
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<S>().await;
    let status = breakwater_proto::v1::status_service_server::StatusServiceServer::new(health::StatusGrpc(status));
    Routes::new(health_service).add_service(status).add_service(service)
}

/// The endpoint at `uri` (`http://host:port`), connecting lazily within `connect_timeout`.
fn endpoint(uri: &str, connect_timeout: Duration) -> Result<Endpoint, GrpcError> {
    let endpoint = Endpoint::from_shared(uri.to_owned()).map_err(|_| GrpcError::Endpoint(uri.to_owned()))?;
    Ok(endpoint.connect_timeout(connect_timeout).tcp_nodelay(true).http2_keep_alive_interval(Duration::from_secs(30)))
}

/// A channel to `uri` (`http://host:port`) that connects on first use and
/// reconnects by itself, so a component that starts later or restarts is
/// picked up without restarting the caller; each call is bounded by `timeout`.
///
/// # Errors
/// When `uri` is not a valid endpoint.
pub fn connect_lazy(uri: &str, timeout: Duration) -> Result<Channel, GrpcError> {
    Ok(endpoint(uri, timeout)?.timeout(timeout).connect_lazy())
}
