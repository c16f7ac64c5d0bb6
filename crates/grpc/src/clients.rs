//! The four components as a caller (the edge) calls them: over the network
//! with a tonic client (split mode), or in this process (`breakwater up`),
//! where the component's service implementation is called directly: no
//! socket, no HTTP/2, no protobuf encoding. Either way a call gets the same
//! client and server spans (one trace per alert), the same per-RPC metrics
//! and the same deadline, and answers the same `tonic::Status` on failure,
//! so the caller's degradation rules do not depend on the transport.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_proto::v1 as pb;
use breakwater_proto::v1::crd_writer_service_client::CrdWriterServiceClient;
use breakwater_proto::v1::crd_writer_service_server::CrdWriterService;
use breakwater_proto::v1::dedup_service_client::DedupServiceClient;
use breakwater_proto::v1::dedup_service_server::DedupService;
use breakwater_proto::v1::rate_limit_service_client::RateLimitServiceClient;
use breakwater_proto::v1::rate_limit_service_server::RateLimitService;
use breakwater_proto::v1::storm_service_client::StormServiceClient;
use breakwater_proto::v1::storm_service_server::StormService;
use breakwater_telemetry::context;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::rpc_telemetry::{Side, record_rpc, rpc_span};
use crate::{MAX_MESSAGE_BYTES, TracedTransport, Transport};

/// A component's service implementation, as it hands itself to the edge of
/// its own process (see [`crate::Incoming::with_local`]).
#[derive(Clone)]
pub enum LocalService {
    RateLimit(Arc<dyn RateLimitService>),
    Dedup(Arc<dyn DedupService>),
    Storm(Arc<dyn StormService>),
    CrdWriter(Arc<dyn CrdWriterService>),
}

impl std::fmt::Debug for LocalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::RateLimit(_) => "ratelimit",
            Self::Dedup(_) => "dedup",
            Self::Storm(_) => "storm",
            Self::CrdWriter(_) => "crd-writer",
        };
        f.debug_tuple("LocalService").field(&name).finish()
    }
}

/// `component`'s service implementation `service`, called in process by
/// `caller`, each call bounded by `deadline`.
pub struct Local<T: ?Sized> {
    service: Arc<T>,
    component: &'static str,
    caller: &'static str,
    deadline: Duration,
}

impl<T: ?Sized> Clone for Local<T> {
    fn clone(&self) -> Self {
        Self { service: self.service.clone(), ..*self }
    }
}

impl<T: ?Sized> std::fmt::Debug for Local<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").field("component", &self.component).field("deadline", &self.deadline).finish()
    }
}

impl<T: ?Sized + Send + Sync + 'static> Local<T> {
    pub fn new(service: Arc<T>, component: &'static str, caller: &'static str, deadline: Duration) -> Self {
        Self { service, component, caller, deadline }
    }

    /// Calls `method` of `service` (its gRPC names) through `handle`, inside
    /// the spans and metrics of both ends, as [`crate::RpcTelemetry`] gives a
    /// call over the network, and the deadline of [`crate::Deadline`].
    async fn call<Req, Resp, Fut>(
        &self,
        service: &'static str,
        method: &'static str,
        request: Request<Req>,
        handle: impl FnOnce(Arc<T>, Request<Req>) -> Fut,
    ) -> Result<Response<Resp>, Status>
    where
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let (caller, component, deadline) = (self.caller, self.component, self.deadline);
        let client_span = rpc_span(Side::Client, caller, service, method);
        let server_span = client_span.in_scope(|| rpc_span(Side::Server, component, service, method));
        if let Some(id) = context::current_request_id() {
            server_span.record("request_id", id);
        }
        let served = handle(self.service.clone(), request);
        let served = async move {
            let start = Instant::now();
            let result = served.await;
            record_rpc(Side::Server, component, method.to_owned(), Some(code_of(&result)), start);
            result
        }
        .instrument(server_span);
        async move {
            let start = Instant::now();
            let result = match tokio::time::timeout(deadline, served).await {
                Ok(result) => result,
                // What a tonic client answers for a missed deadline.
                Err(_) => Err(Status::cancelled("Timeout expired")),
            };
            record_rpc(Side::Client, caller, method.to_owned(), Some(code_of(&result)), start);
            result
        }
        .instrument(client_span)
        .await
    }
}

fn code_of<T>(result: &Result<T, Status>) -> tonic::Code {
    result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok)
}

/// A client enum per component: the same methods, with the same names and
/// types, as its tonic client, whichever end is behind it.
macro_rules! component_client {
    (
        $(#[$doc:meta])*
        $name:ident: $component:literal, $service:literal, $trait:ident, $client:ident, $variant:ident,
        { $($method:ident($request:ident) -> $response:ident = $rpc:literal;)* }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub enum $name {
            Remote($client<TracedTransport>),
            Local(Local<dyn $trait>),
        }

        impl $name {
            /// Over `transport` (split mode), each call bounded by `deadline`.
            pub fn remote(transport: Transport, caller: &'static str, deadline: Duration) -> Self {
                Self::Remote(
                    $client::new(crate::client(transport, caller, deadline))
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES),
                )
            }

            /// The component's service implementation, when `local` is that
            /// component's; each call bounded by `deadline`.
            pub fn local(local: LocalService, caller: &'static str, deadline: Duration) -> Option<Self> {
                match local {
                    LocalService::$variant(service) => {
                        Some(Self::Local(Local::new(service, $component, caller, deadline)))
                    }
                    _ => None,
                }
            }

            $(
                pub async fn $method(
                    &self,
                    request: impl tonic::IntoRequest<pb::$request>,
                ) -> Result<Response<pb::$response>, Status> {
                    match self {
                        Self::Remote(client) => client.clone().$method(request).await,
                        Self::Local(local) => {
                            local
                                .call($service, $rpc, request.into_request(), |service, request| async move {
                                    service.$method(request).await
                                })
                                .await
                        }
                    }
                }
            )*
        }
    };
}

component_client! {
    /// `breakwater.v1.RateLimitService`.
    RateLimitClient: "ratelimit", "breakwater.v1.RateLimitService", RateLimitService, RateLimitServiceClient, RateLimit, {
        check_rate_limit(CheckRateLimitRequest) -> CheckRateLimitResponse = "CheckRateLimit";
    }
}

component_client! {
    /// `breakwater.v1.DedupService`.
    DedupClient: "dedup", "breakwater.v1.DedupService", DedupService, DedupServiceClient, Dedup, {
        check_signals(CheckSignalsRequest) -> CheckSignalsResponse = "CheckSignals";
        bind_remediations(BindRemediationsRequest) -> BindRemediationsResponse = "BindRemediations";
        get_placements(GetPlacementsRequest) -> GetPlacementsResponse = "GetPlacements";
    }
}

component_client! {
    /// `breakwater.v1.StormService`.
    StormClient: "storm", "breakwater.v1.StormService", StormService, StormServiceClient, Storm, {
        detect_storms(DetectStormsRequest) -> DetectStormsResponse = "DetectStorms";
        count_storm_alerts(CountStormAlertsRequest) -> CountStormAlertsResponse = "CountStormAlerts";
    }
}

component_client! {
    /// `breakwater.v1.CrdWriterService`.
    CrdWriterClient: "crd-writer", "breakwater.v1.CrdWriterService", CrdWriterService, CrdWriterServiceClient, CrdWriter, {
        write_remediations(WriteRemediationsRequest) -> WriteRemediationsResponse = "WriteRemediations";
    }
}

#[cfg(test)]
mod tests;
