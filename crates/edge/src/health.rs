//! `/readyz`: can this edge take signals, and which features are degraded?

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::router::EdgeState;

#[derive(Debug, Serialize)]
pub struct Readiness {
    /// `ready`, `degraded` (a feature is off, signals still flow) or `not_ready`.
    pub status: &'static str,
    /// Per component: `serving`, or a sentence saying what is wrong.
    pub components: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// 503 only when signals cannot be persisted (crd-writer unreachable) or the
/// edge is shutting down; an unreachable ratelimit, dedup or storm degrades
/// one feature and answers 200 `degraded`.
pub async fn readyz(State(state): State<EdgeState>) -> (StatusCode, Json<Readiness>) {
    let checks = state.components.channels.iter().map(|(name, channel)| async move {
        let mut client = HealthClient::new(channel.clone());
        let call = client.check(HealthCheckRequest { service: String::new() });
        let verdict = match tokio::time::timeout(Duration::from_secs(1), call).await {
            Ok(Ok(r)) if r.get_ref().status() == ServingStatus::Serving => "serving".to_owned(),
            Ok(Ok(r)) => format!("not serving ({:?})", r.get_ref().status()),
            Ok(Err(status)) => format!("unreachable: {}", status.message()),
            Err(_) => "unreachable: health check timed out after 1s".to_owned(),
        };
        (*name, verdict)
    });
    let components: BTreeMap<&'static str, String> = futures::future::join_all(checks).await.into_iter().collect();
    for (name, verdict) in &components {
        metrics::gauge!("breakwater_edge_component_up", "component" => *name)
            .set(f64::from(u8::from(verdict == "serving")));
    }
    if state.shutting_down.load(Ordering::SeqCst) {
        let detail = Some("shutting down".to_owned());
        return (StatusCode::SERVICE_UNAVAILABLE, Json(Readiness { status: "not_ready", components, detail }));
    }
    let all_serving = components.values().all(|v| v == "serving");
    let writer_serving = components.get("crd-writer").is_some_and(|v| v == "serving");
    let (code, status, detail) = match (writer_serving, all_serving) {
        (true, true) => (StatusCode::OK, "ready", None),
        (true, false) => (
            StatusCode::OK,
            "degraded",
            Some("a component is unreachable; its feature is off until it returns (see components)".to_owned()),
        ),
        (false, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            Some("crd-writer is unreachable: RemediationRequests cannot be written".to_owned()),
        ),
    };
    (code, Json(Readiness { status, components, detail }))
}
