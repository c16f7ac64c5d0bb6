//! `breakwater.v1.DedupService`: checks and converts messages; [`Incidents`] decides.

use std::sync::Arc;

use breakwater_grpc::ComponentHealth;
use breakwater_proto::v1 as pb;
use breakwater_signal::{Clock, fingerprint, is_dns1123_label};
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::Error;
use crate::incidents::{Incidents, WindowPlacement};
use crate::store::{Bind, DedupStore, WindowEnd, WindowRef};
use crate::window::{Binding, Decision, DeliveryKey, Placement, Query, Status as SignalStatus};

/// The gRPC face of dedup.
#[derive(Clone)]
pub struct DedupGrpc {
    incidents: Arc<Incidents>,
}

impl DedupGrpc {
    /// `window` is the dedup window. `starts_empty` says the store lost
    /// everything before now (the in-process store), so for one window new
    /// incidents are flagged `state_uncertain`.
    pub fn new(
        store: Arc<dyn DedupStore>,
        clock: Arc<dyn Clock>,
        health: Arc<ComponentHealth>,
        window: std::time::Duration,
        starts_empty: bool,
    ) -> Self {
        Self { incidents: Arc::new(Incidents::new(store, clock, health, window, starts_empty)) }
    }
}

#[tonic::async_trait]
impl pb::dedup_service_server::DedupService for DedupGrpc {
    #[tracing::instrument(skip_all, fields(breakwater.component = "dedup", queries = request.get_ref().queries.len()))]
    async fn check_signals(
        &self,
        request: Request<pb::CheckSignalsRequest>,
    ) -> Result<Response<pb::CheckSignalsResponse>, Status> {
        let request = request.into_inner();
        check_len("queries", request.queries.len())?;
        let queries =
            request.queries.iter().enumerate().map(|(i, q)| query_from_pb(i, q)).collect::<Result<Vec<_>, Status>>()?;
        let namespaces: Vec<&str> = request.queries.iter().map(|q| q.namespace.as_str()).collect();
        let answers = self.incidents.check(&queries, &namespaces).await.map_err(Status::from)?;
        let verdicts = answers
            .into_iter()
            .map(|a| {
                let outcome = match a.decision {
                    Decision::New => pb::DedupOutcome::New,
                    Decision::Duplicate => pb::DedupOutcome::Duplicate,
                    Decision::Resolved => pb::DedupOutcome::Resolved,
                    Decision::ResolvedUnknown => pb::DedupOutcome::ResolvedUnknown,
                    Decision::Copy => pb::DedupOutcome::Copy,
                };
                let mut verdict = pb::DedupVerdict {
                    outcome: outcome.into(),
                    state_uncertain: a.state_uncertain,
                    ..Default::default()
                };
                if let Some(w) = a.window {
                    verdict.placement_pending = w.counted_on.is_none();
                    verdict.remediation = w.counted_on.map(remediation_ref);
                    verdict.first_seen_unix_ms = w.first_seen;
                    verdict.last_seen_unix_ms = w.last_seen;
                    verdict.occurrence_count = w.count;
                    verdict.window_ends_unix_ms = w.ends_at.unwrap_or(0);
                }
                verdict
            })
            .collect();
        Ok(Response::new(pb::CheckSignalsResponse { verdicts }))
    }

    #[tracing::instrument(skip_all, fields(breakwater.component = "dedup", bindings = request.get_ref().bindings.len()))]
    async fn bind_remediations(
        &self,
        request: Request<pb::BindRemediationsRequest>,
    ) -> Result<Response<pb::BindRemediationsResponse>, Status> {
        let pb::BindRemediationsRequest { bindings, ends } = request.into_inner();
        check_len("bindings", bindings.len())?;
        check_len("ends", ends.len())?;
        let ends = ends
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                check_fingerprint(i, "ends", &e.fingerprint)?;
                Ok(WindowEnd { fingerprint: e.fingerprint, first_seen: e.first_seen_unix_ms, ends_at: e.ends_unix_ms })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let binds = bindings
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                check_fingerprint(i, "bindings", &b.fingerprint)?;
                let to = match b.remediation.filter(|r| !r.name.is_empty()) {
                    None => Placement::Own,
                    Some(r) if !is_dns1123_label(&r.name) || !is_dns1123_label(&r.namespace) => {
                        return Err(invalid(format!("bindings[{i}].remediation"), "a namespace and a CR name"));
                    }
                    Some(r) => Placement::Bound(Binding { namespace: r.namespace, name: r.name }),
                };
                Ok(Bind { fingerprint: b.fingerprint, first_seen: b.first_seen_unix_ms, to })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let (bound, ended) = self.incidents.bind(&binds, &ends).await.map_err(Status::from)?;
        Ok(Response::new(pb::BindRemediationsResponse { bound, ended }))
    }

    #[tracing::instrument(skip_all, fields(breakwater.component = "dedup", windows = request.get_ref().windows.len()))]
    async fn get_placements(
        &self,
        request: Request<pb::GetPlacementsRequest>,
    ) -> Result<Response<pb::GetPlacementsResponse>, Status> {
        let windows = request.into_inner().windows;
        check_len("windows", windows.len())?;
        let refs = windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                check_fingerprint(i, "windows", &w.fingerprint)?;
                check_namespace(i, "windows", &w.namespace)?;
                Ok(WindowRef { fingerprint: w.fingerprint.clone(), first_seen: w.first_seen_unix_ms })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let namespaces: Vec<&str> = windows.iter().map(|w| w.namespace.as_str()).collect();
        let found = self.incidents.placements(&refs, &namespaces).await.map_err(Status::from)?;
        let placements = found
            .into_iter()
            .map(|placement| match placement {
                WindowPlacement::Closed => {
                    pb::Placement { state: pb::PlacementState::Closed.into(), remediation: None }
                }
                WindowPlacement::Pending => {
                    pb::Placement { state: pb::PlacementState::Pending.into(), remediation: None }
                }
                WindowPlacement::Placed(cr) => {
                    pb::Placement { state: pb::PlacementState::Placed.into(), remediation: Some(remediation_ref(cr)) }
                }
            })
            .collect();
        Ok(Response::new(pb::GetPlacementsResponse { placements }))
    }
}

fn remediation_ref(cr: Binding) -> pb::RemediationRef {
    pb::RemediationRef { namespace: cr.namespace, name: cr.name }
}

/// A query checked as strictly as the edge makes it: a resolution from anyone
/// who can reach dedup closes the window of its fingerprint, so it must at least
/// be well formed (fingerprint, status, the namespace of its CR, delivery key).
fn query_from_pb(i: usize, q: &pb::DedupQuery) -> Result<Query, Status> {
    check_fingerprint(i, "queries", &q.fingerprint)?;
    check_namespace(i, "queries", &q.namespace)?;
    let status = match pb::SignalStatus::try_from(q.status) {
        Ok(pb::SignalStatus::Firing) => SignalStatus::Firing,
        Ok(pb::SignalStatus::Resolved) => SignalStatus::Resolved,
        _ => return Err(invalid(format!("queries[{i}].status"), "FIRING or RESOLVED")),
    };
    let delivery =
        match q.delivery_key.as_str() {
            "" => None,
            key => Some(DeliveryKey::parse(key).ok_or_else(|| {
                invalid(format!("queries[{i}].delivery_key"), "empty or 32 lower-case hex characters")
            })?),
        };
    Ok(Query { fingerprint: q.fingerprint.clone(), status, delivery })
}

fn check_fingerprint(i: usize, list: &str, fp: &str) -> Result<(), Status> {
    if fingerprint::is_valid(fp) {
        Ok(())
    } else {
        Err(invalid(format!("{list}[{i}].fingerprint"), "64 lower-case hex characters"))
    }
}

fn check_namespace(i: usize, list: &str, namespace: &str) -> Result<(), Status> {
    if is_dns1123_label(namespace) {
        Ok(())
    } else {
        Err(invalid(format!("{list}[{i}].namespace"), "a namespace name (a DNS-1123 label)"))
    }
}

fn check_len(list: &str, len: usize) -> Result<(), Status> {
    if len <= breakwater_grpc::MAX_BATCH_ITEMS {
        Ok(())
    } else {
        Err(invalid(list.to_owned(), &format!("at most {} items", breakwater_grpc::MAX_BATCH_ITEMS)))
    }
}

fn invalid(field: String, expected: &str) -> Status {
    let details = ErrorDetails::with_bad_request_violation(field.clone(), format!("must be {expected}"));
    Status::with_error_details(tonic::Code::InvalidArgument, format!("invalid {field}"), details)
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        metrics::counter!("breakwater_dedup_store_errors_total", "kind" => e.metric_label()).increment(1);
        // Logged once per outage by ComponentHealth; per call only at debug level.
        tracing::debug!(cause = %e, source = ?std::error::Error::source(&e), "dedup store failed");
        // The edge applies the degradation table to Unavailable; the cause stays in our logs.
        breakwater_grpc::store_unavailable("dedup store unavailable")
    }
}

#[cfg(test)]
mod tests {
    use breakwater_signal::ManualClock;
    use pb::dedup_service_server::DedupService as _;

    use super::*;
    use crate::{DedupConfig, MemoryDedupStore};

    const FP: &str = "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd";

    fn query(status: pb::SignalStatus, namespace: &str) -> Request<pb::CheckSignalsRequest> {
        let q = pb::DedupQuery {
            fingerprint: FP.to_owned(),
            status: status.into(),
            namespace: namespace.to_owned(),
            delivery_key: String::new(),
        };
        Request::new(pb::CheckSignalsRequest { queries: vec![q] })
    }

    // Issue 13: a resolution is checked as strictly as the edge makes one; a malformed one
    // closes nothing.
    #[tokio::test]
    async fn a_malformed_resolution_is_refused_and_the_incident_stays_open() {
        let config = DedupConfig::default();
        let store = Arc::new(MemoryDedupStore::new(crate::DedupWindow::new(config.window())));
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let grpc = DedupGrpc::new(store, clock, ComponentHealth::new("dedup"), config.window(), false);
        let first = grpc.check_signals(query(pb::SignalStatus::Firing, "prod")).await.unwrap().into_inner();
        assert_eq!(first.verdicts[0].outcome(), pb::DedupOutcome::New);
        for bad in ["", "Kube_System", &"a".repeat(64)] {
            let status = grpc.check_signals(query(pb::SignalStatus::Resolved, bad)).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "queries[0].namespace");
        }
        let again = grpc.check_signals(query(pb::SignalStatus::Firing, "prod")).await.unwrap().into_inner();
        assert_eq!(again.verdicts[0].outcome(), pb::DedupOutcome::Duplicate, "still open");
    }
}
