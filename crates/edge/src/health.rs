//! `/readyz`: can this edge take signals, and which features are degraded?

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use breakwater_grpc::TracedTransport;
use breakwater_proto::v1 as pb;
use breakwater_proto::v1::status_service_client::StatusServiceClient;
use serde::Serialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::router::EdgeState;

#[derive(Debug, Serialize)]
pub struct Readiness {
    /// `ready`, `degraded` (a feature is off, signals still flow) or `not_ready`.
    pub status: &'static str,
    pub components: BTreeMap<&'static str, ComponentReadiness>,
    /// The edge's own problems: components it is degrading around.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ComponentReadiness {
    /// `serving`, or a sentence saying why not.
    pub state: String,
    /// What the component reports running short of (memory budget, its Redis, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

async fn check(component: TracedTransport) -> ComponentReadiness {
    let mut health = HealthClient::new(component.clone());
    let state =
        match tokio::time::timeout(CHECK_TIMEOUT, health.check(HealthCheckRequest { service: String::new() })).await {
            Ok(Ok(r)) if r.get_ref().status() == ServingStatus::Serving => "serving".to_owned(),
            Ok(Ok(r)) => format!("not serving ({:?})", r.get_ref().status()),
            Ok(Err(status)) => format!("unreachable: {}", status.message()),
            Err(_) => "unreachable: health check timed out after 1s".to_owned(),
        };
    let mut problems = Vec::new();
    if state == "serving" {
        let mut status = StatusServiceClient::new(component);
        match tokio::time::timeout(CHECK_TIMEOUT, status.get_status(pb::GetStatusRequest {})).await {
            Ok(Ok(r)) => problems = r.into_inner().problems,
            Ok(Err(e)) => problems.push(format!("status unavailable: {}", e.message())),
            Err(_) => problems.push("status timed out after 1s".to_owned()),
        }
    }
    ComponentReadiness { state, problems }
}

/// 503 only when signals cannot be persisted (crd-writer unreachable) or the
/// edge is shutting down; anything else that is wrong degrades one feature and
/// answers 200 `degraded`, with one sentence per problem.
pub async fn readyz(State(state): State<EdgeState>) -> (StatusCode, Json<Readiness>) {
    let checks = state
        .components
        .transports
        .iter()
        .map(|(name, component)| async move { (*name, check(component.clone()).await) });
    let components: BTreeMap<&'static str, ComponentReadiness> =
        futures::future::join_all(checks).await.into_iter().collect();
    for (name, c) in &components {
        metrics::gauge!("breakwater_edge_component_up", "component" => *name)
            .set(f64::from(u8::from(c.state == "serving")));
    }
    let problems = state.health.problems();
    if state.shutting_down.load(Ordering::SeqCst) {
        let detail = Some("shutting down".to_owned());
        let body = Readiness { status: "not_ready", components, problems, detail };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
    }
    let writer_serving = components.get("crd-writer").is_some_and(|c| c.state == "serving");
    let all_well = problems.is_empty() && components.values().all(|c| c.state == "serving" && c.problems.is_empty());
    let (code, status, detail) = match (writer_serving, all_well) {
        (true, true) => (StatusCode::OK, "ready", None),
        (true, false) => (
            StatusCode::OK,
            "degraded",
            Some("signals are accepted; a feature is degraded (see components and problems)".to_owned()),
        ),
        (false, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            Some("crd-writer is unreachable: RemediationRequests cannot be written".to_owned()),
        ),
    };
    (code, Json(Readiness { status, components, problems, detail }))
}
