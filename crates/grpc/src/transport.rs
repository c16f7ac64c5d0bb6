//! How a caller reaches a component: one [`Transport`], whichever carries the
//! calls, inside the one stack of layers every call gets ([`client`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::service::Routes;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder};

use crate::{GrpcError, RpcTelemetry, RpcTelemetryLayer};

mod replicas;

pub(crate) use replicas::never_sent;

pub use replicas::Idempotent;
use replicas::Replicas;

/// One component as a `tower::Service` of gRPC requests: a lazy tonic channel
/// (split mode), or the component's routes called in this process
/// (`breakwater up`, no socket, no HTTP/2; its health and status checks: the
/// calls that carry alerts skip encoding too, see [`crate::DedupClient`]).
#[derive(Clone, Debug)]
pub struct Transport(Boxed);

type Boxed = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

impl Transport {
    /// The replicas of `component` at `urls` (comma-separated
    /// `http://host:port`; a host name stands for every address it resolves
    /// to, looked up again every `resolve_every`), each a channel that
    /// connects on first use, within `connect_timeout`, and reconnects by
    /// itself, so a replica that starts later or restarts is picked up without
    /// restarting the caller. Calls go round-robin over the replicas, and on
    /// to the next one when a replica certainly did not take the call (or
    /// failed one marked [`Idempotent`]). Calls are bounded by [`client`]'s
    /// deadline, not here. `https://` URLs use `tls`.
    ///
    /// # Errors
    /// When a URL is not a valid endpoint, or is `https://` without `tls`.
    pub fn replicas(
        component: &'static str,
        urls: &str,
        connect_timeout: Duration,
        resolve_every: Duration,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, GrpcError> {
        let replicas = Replicas::new(component, urls, connect_timeout, resolve_every, tls)?;
        let service = tower::service_fn(move |request: http::Request<Body>| replicas.clone().call(request));
        Ok(Self(BoxCloneSyncService::new(service)))
    }

    /// `routes` called directly, with the server side of the RPC telemetry of
    /// `component`, so its spans and metrics are those it has over TCP.
    pub(crate) fn in_process(routes: Routes, component: &'static str) -> Self {
        let server = ServiceBuilder::new()
            .map_err(|never: Infallible| -> BoxError { match never {} })
            .layer(RpcTelemetryLayer::server(component))
            .service(routes.prepare());
        Self(BoxCloneSyncService::new(server))
    }
}

impl tower::Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = <Boxed as tower::Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.0.call(request)
    }
}

/// A [`Transport`] inside the layers of every call to a component.
pub type TracedTransport = RpcTelemetry<Deadline<Transport>>;

/// `transport` as `caller` calls it, in process or not: each call carries the
/// caller's trace context and counts in its client metrics, and gives up
/// after `deadline` (the caller then degrades as for an unreachable component).
pub fn client(transport: Transport, caller: &'static str, deadline: Duration) -> TracedTransport {
    ServiceBuilder::new()
        // Outermost, so the span and the metrics cover a missed deadline too.
        .layer(RpcTelemetryLayer::client(caller))
        .layer_fn(|inner| Deadline { inner, deadline })
        .service(transport)
}

/// Fails a call that takes longer than `deadline` with tonic's own
/// `TimeoutExpired`, which a tonic client reports as `Cancelled: Timeout
/// expired`, as for a channel's `.timeout`. (tower's `Timeout` fails with
/// `Elapsed`, which would be `Unknown`.)
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    deadline: Duration,
}

impl<S, R> tower::Service<R> for Deadline<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let (call, deadline) = (self.inner.call(request), self.deadline);
        Box::pin(async move {
            match tokio::time::timeout(deadline, call).await {
                Ok(answer) => answer.map_err(Into::into),
                Err(_) => Err(Box::new(tonic::TimeoutExpired(())) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests;
