//! `breakwater.v1.DedupService`: proto in, store call, proto out.

use std::sync::Arc;

use breakwater_proto::v1 as pb;
use breakwater_signal::{Clock, fingerprint, incident_cr_name};
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::Error;
use crate::store::{Bind, DedupStore};
use crate::window::{Binding, Decision, Query, Status as SignalStatus};

/// The gRPC face of dedup.
#[derive(Clone)]
pub struct DedupGrpc {
    store: Arc<dyn DedupStore>,
    clock: Arc<dyn Clock>,
}

impl DedupGrpc {
    pub fn new(store: Arc<dyn DedupStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }
}

#[tonic::async_trait]
impl pb::dedup_service_server::DedupService for DedupGrpc {
    #[tracing::instrument(skip_all, fields(queries = request.get_ref().queries.len()))]
    async fn check_signals(
        &self,
        request: Request<pb::CheckSignalsRequest>,
    ) -> Result<Response<pb::CheckSignalsResponse>, Status> {
        let request = request.into_inner();
        let queries =
            request.queries.iter().enumerate().map(|(i, q)| query_from_pb(i, q)).collect::<Result<Vec<_>, Status>>()?;
        let verdicts = self.store.check(&queries, self.clock.now()).await.map_err(Error::from)?;
        let verdicts = request
            .queries
            .iter()
            .zip(verdicts)
            .map(|(q, v)| {
                metrics::counter!("breakwater_dedup_decisions_total", "decision" => decision_label(v.decision))
                    .increment(1);
                let outcome = match v.decision {
                    Decision::New => pb::DedupOutcome::New,
                    Decision::Duplicate => pb::DedupOutcome::Duplicate,
                    Decision::Resolved => pb::DedupOutcome::Resolved,
                    Decision::ResolvedUnknown => pb::DedupOutcome::ResolvedUnknown,
                };
                let mut verdict = pb::DedupVerdict { outcome: outcome.into(), ..Default::default() };
                if let Some(r) = v.record {
                    verdict.remediation = Some(match r.bound_to {
                        Some(b) => pb::RemediationRef { namespace: b.namespace, name: b.name },
                        None => pb::RemediationRef {
                            namespace: q.namespace.clone(),
                            name: incident_cr_name(&q.fingerprint, r.first_seen),
                        },
                    });
                    verdict.first_seen_unix_ms = r.first_seen;
                    verdict.last_seen_unix_ms = r.last_seen;
                    verdict.occurrence_count = r.count;
                }
                verdict
            })
            .collect();
        Ok(Response::new(pb::CheckSignalsResponse { verdicts }))
    }

    #[tracing::instrument(skip_all, fields(bindings = request.get_ref().bindings.len()))]
    async fn bind_remediations(
        &self,
        request: Request<pb::BindRemediationsRequest>,
    ) -> Result<Response<pb::BindRemediationsResponse>, Status> {
        let binds = request
            .into_inner()
            .bindings
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                check_fingerprint(i, "bindings", &b.fingerprint)?;
                let to =
                    b.remediation.filter(|r| !r.name.is_empty() && !r.name.contains('/') && !r.namespace.contains('/'));
                let to = to
                    .ok_or_else(|| invalid(format!("bindings[{i}].remediation"), "a namespace and name without '/'"))?;
                Ok(Bind {
                    fingerprint: b.fingerprint,
                    first_seen: b.first_seen_unix_ms,
                    to: Binding { namespace: to.namespace, name: to.name },
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let bound = self.store.bind(&binds, self.clock.now()).await.map_err(Error::from)?;
        Ok(Response::new(pb::BindRemediationsResponse { bound }))
    }
}

fn query_from_pb(i: usize, q: &pb::DedupQuery) -> Result<Query, Status> {
    check_fingerprint(i, "queries", &q.fingerprint)?;
    let status = match pb::SignalStatus::try_from(q.status) {
        Ok(pb::SignalStatus::Firing) => SignalStatus::Firing,
        Ok(pb::SignalStatus::Resolved) => SignalStatus::Resolved,
        _ => return Err(invalid(format!("queries[{i}].status"), "FIRING or RESOLVED")),
    };
    Ok(Query { fingerprint: q.fingerprint.clone(), status })
}

fn check_fingerprint(i: usize, list: &str, fp: &str) -> Result<(), Status> {
    if fingerprint::is_valid(fp) {
        Ok(())
    } else {
        Err(invalid(format!("{list}[{i}].fingerprint"), "64 lower-case hex characters"))
    }
}

fn invalid(field: String, expected: &str) -> Status {
    let details = ErrorDetails::with_bad_request_violation(field.clone(), format!("must be {expected}"));
    Status::with_error_details(tonic::Code::InvalidArgument, format!("invalid {field}"), details)
}

fn decision_label(d: Decision) -> &'static str {
    match d {
        Decision::New => "new",
        Decision::Duplicate => "duplicate",
        Decision::Resolved => "resolved",
        Decision::ResolvedUnknown => "resolved_unknown",
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        metrics::counter!("breakwater_dedup_store_errors_total", "kind" => e.metric_label()).increment(1);
        tracing::warn!(cause = %e, source = ?std::error::Error::source(&e), "dedup store failed");
        // The edge applies the degradation table to Unavailable; the cause stays in our logs.
        Status::unavailable("dedup store unavailable")
    }
}
