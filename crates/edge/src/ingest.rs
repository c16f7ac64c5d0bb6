//! `breakwater.v1.IngestService`: the edge's gRPC API for internal callers. A call is a
//! batch like a webhook: the same limits, pipeline, results and metrics, answered in proto.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use breakwater_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use sha2::{Digest, Sha256};

use crate::adapters::{Signals, ingest};
use crate::auth::{AuthError, Authenticator, bearer_of};
use crate::error::EdgeError;
use crate::pipeline::{AlertOutcome, AlertResult};
use crate::router::EdgeState;
use crate::submit::{Summary, submit};

/// The gRPC face of the edge; cheap to clone.
#[derive(Clone)]
pub struct IngestGrpc {
    state: EdgeState,
}

impl IngestGrpc {
    pub fn new(state: EdgeState) -> Self {
        Self { state }
    }

    /// The service, with messages up to `edge.body_limit_bytes` (larger: OUT_OF_RANGE).
    pub fn server(self) -> pb::ingest_service_server::IngestServiceServer<Self> {
        let limit = self.state.config.body_limit_bytes;
        pb::ingest_service_server::IngestServiceServer::new(self).max_decoding_message_size(limit)
    }
}

#[tonic::async_trait]
impl pb::ingest_service_server::IngestService for IngestGrpc {
    #[tracing::instrument(skip_all, fields(breakwater.component = "edge", signals = request.get_ref().signals.len()))]
    async fn submit_signals(
        &self,
        request: Request<pb::SubmitSignalsRequest>,
    ) -> Result<Response<pb::SubmitSignalsResponse>, Status> {
        let state = &self.state;
        let sender = match &state.auth {
            Some(auth) => authenticate(auth, &request).await?,
            None => {
                request.remote_addr().map_or_else(|| "unknown".to_owned(), |addr: SocketAddr| addr.ip().to_string())
            }
        };
        let request = request.into_inner();
        if request.signals.is_empty() {
            metrics::counter!("breakwater_signals_rejected_total", "source" => ingest::SOURCE_TYPE, "reason" => "invalid")
                .increment(1);
            let details = ErrorDetails::with_bad_request_violation("signals", "must hold at least one signal");
            return Err(Status::with_error_details(tonic::Code::InvalidArgument, "no signals in the request", details));
        }
        let encoded = prost::Message::encoded_len(&request);
        let _bytes = state.budget.reserve(encoded, ingest::expanded_bytes(&request)).map_err(status)?;
        let config = &state.config;
        let incoming =
            ingest::signals(request, state.clock.now(), &config.fingerprint, &config.caps(), &config.namespace_labels);
        let incoming = Signals::unshared(incoming);
        let deadline = Duration::from_millis(config.request_timeout_ms);
        let results = match tokio::time::timeout(deadline, submit(state, sender, ingest::SOURCE_TYPE, incoming)).await {
            Ok(submitted) => submitted.map_err(status)?.results,
            Err(_) => return Err(status(EdgeError::Timeout)),
        };
        let Summary { status: word, message } = Summary::of(&results);
        Ok(Response::new(pb::SubmitSignalsResponse {
            status: word.to_owned(),
            message,
            results: results.into_iter().map(result).collect(),
        }))
    }
}

/// The caller's rate-limit sender once `edge.auth` lets it in: the identity of its bearer
/// token (`authorization: Bearer <token>` metadata), else of the client certificate it
/// presented when the listener verifies them (`tls.client_ca_file`): `cert:<SHA-256 of
/// the certificate>`.
async fn authenticate<T>(auth: &Authenticator, request: &Request<T>) -> Result<String, Status> {
    let bearer = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(bearer_of);
    if bearer.is_none()
        && let Some(certificate) = request.peer_certs().as_deref().and_then(|certs| certs.first())
    {
        return Ok(format!("cert:{}", hex::encode(Sha256::digest(certificate.as_ref()))));
    }
    match auth.authenticate(bearer).await {
        Ok(identity) => Ok(identity.sender()),
        Err(e) => {
            metrics::counter!("breakwater_auth_failures_total", "reason" => e.metric_label()).increment(1);
            Err(match e {
                AuthError::Missing | AuthError::Invalid => Status::unauthenticated(e.to_string()),
                AuthError::Forbidden { .. } => Status::permission_denied(e.to_string()),
                AuthError::Unavailable(_) => status(EdgeError::from(e)),
            })
        }
    }
}

fn result(r: AlertResult) -> pb::SignalResult {
    let outcome = match r.outcome {
        AlertOutcome::Created => pb::SignalOutcome::Created,
        AlertOutcome::Duplicate => pb::SignalOutcome::Duplicate,
        AlertOutcome::StormCreated => pb::SignalOutcome::StormCreated,
        AlertOutcome::StormAggregated => pb::SignalOutcome::StormAggregated,
        AlertOutcome::Resolved => pb::SignalOutcome::Resolved,
        AlertOutcome::ResolvedUnknown => pb::SignalOutcome::ResolvedUnknown,
        AlertOutcome::DuplicateDelivery => pb::SignalOutcome::DuplicateDelivery,
        AlertOutcome::Rejected => pb::SignalOutcome::Rejected,
    };
    let remediation = match (r.remediation_request_namespace, r.remediation_request_name) {
        (Some(namespace), Some(name)) => Some(pb::RemediationRef { namespace, name }),
        _ => None,
    };
    pb::SignalResult {
        index: u32::try_from(r.index).unwrap_or(u32::MAX),
        outcome: outcome.into(),
        fingerprint: r.fingerprint,
        alert_name: r.alert_name,
        remediation,
        occurrence_count: r.occurrence_count.unwrap_or_default(),
        storm_alert_count: r.storm_alert_count.unwrap_or_default(),
        reason: r.reason.unwrap_or_default(),
        environment: r.environment.unwrap_or_default(),
        priority: r.priority.unwrap_or_default().to_owned(),
        remediation_path: r.remediation_path.unwrap_or_default().to_owned(),
    }
}

/// The gRPC status of a refused call: a caller over its rate gets RESOURCE_EXHAUSTED, a
/// call that may succeed later UNAVAILABLE, both with `retry-after` (seconds) metadata and
/// a `RetryInfo` detail.
fn status(e: EdgeError) -> Status {
    if let Some(cause) = e.cause() {
        tracing::error!(cause = %breakwater_telemetry::redact(cause), "ingest call failed");
    }
    let code = match &e {
        EdgeError::BadRequest(_) => tonic::Code::InvalidArgument,
        EdgeError::RateLimited { .. } => tonic::Code::ResourceExhausted,
        EdgeError::Overloaded
        | EdgeError::OverBudget
        | EdgeError::CannotPersist { .. }
        | EdgeError::AuthUnavailable { .. } => tonic::Code::Unavailable,
        EdgeError::Timeout => tonic::Code::DeadlineExceeded,
        _ => tonic::Code::Internal,
    };
    let Some(after) = e.retry_after() else {
        return Status::new(code, e.to_string());
    };
    let secs = after.as_millis().div_ceil(1000).max(1);
    let mut status = Status::with_error_details(
        code,
        e.to_string(),
        ErrorDetails::with_retry_info(Some(Duration::from_secs(secs as u64))),
    );
    if let Ok(value) = secs.to_string().parse() {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

/// Serves [`IngestGrpc`] (with gRPC health, and reflection) on `incoming` until `shutdown`.
///
/// # Errors
/// When the listener or TLS cannot be set up.
pub async fn run_ingest(
    state: EdgeState,
    incoming: impl Into<breakwater_grpc::Incoming>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), breakwater_grpc::GrpcError> {
    let health = Arc::clone(&state.health);
    breakwater_grpc::serve_with_status(IngestGrpc::new(state).server(), health, incoming, shutdown).await
}
