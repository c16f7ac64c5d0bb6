//! `breakwater.v1.StormService`: checks and converts messages; [`Storms`] decides.

use std::sync::Arc;

use breakwater_grpc::ComponentHealth;
use breakwater_proto::v1 as pb;
use breakwater_signal::{Clock, is_dns1123_label, parse_storm_cr_name};
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::Error;
use crate::detector::{Outcome, StormRules, StormType};
use crate::store::{StormCount, StormQuery, StormStore};
use crate::storms::Storms;

/// The gRPC face of the storm service.
#[derive(Clone)]
pub struct StormGrpc {
    storms: Arc<Storms>,
}

impl StormGrpc {
    /// `rules` tell when a storm this service opened is over, for `breakwater_storms_active`.
    pub fn new(
        store: Arc<dyn StormStore>,
        clock: Arc<dyn Clock>,
        health: Arc<ComponentHealth>,
        rules: StormRules,
    ) -> Self {
        Self { storms: Arc::new(Storms::new(store, clock, health, rules)) }
    }

    /// Brings `breakwater_storms_active` up to date without waiting for an alert.
    pub fn refresh_active_storms(&self) {
        self.storms.refresh_active_storms();
    }
}

#[tonic::async_trait]
impl pb::storm_service_server::StormService for StormGrpc {
    #[tracing::instrument(skip_all, fields(breakwater.component = "storm", queries = request.get_ref().queries.len()))]
    async fn detect_storms(
        &self,
        request: Request<pb::DetectStormsRequest>,
    ) -> Result<Response<pb::DetectStormsResponse>, Status> {
        let request = request.into_inner();
        check_len("queries", request.queries.len())?;
        let queries = request
            .queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                if q.alert_name.is_empty() || q.alert_name.len() > MAX_NAME_BYTES {
                    return Err(invalid(format!("queries[{i}].alert_name"), "non-empty, at most 1 MiB"));
                }
                if q.resource_id.is_empty() || q.resource_id.len() > 3 * MAX_NAME_BYTES + 2 {
                    return Err(invalid(format!("queries[{i}].resource_id"), "non-empty, at most 3 MiB"));
                }
                if !q.namespace.is_empty() && !is_dns1123_label(&q.namespace) {
                    return Err(invalid(format!("queries[{i}].namespace"), "empty or a namespace name"));
                }
                if !is_dns1123_label(&q.remediation_namespace) {
                    return Err(invalid(format!("queries[{i}].remediation_namespace"), "a namespace name"));
                }
                let delivery = match q.delivery_key.as_str() {
                    "" => None,
                    key => Some(breakwater_signal::parse_delivery_key(key).ok_or_else(|| {
                        invalid(format!("queries[{i}].delivery_key"), "empty or 32 lower-case hex characters")
                    })?),
                };
                Ok(StormQuery {
                    namespace: q.namespace.clone(),
                    alert_name: q.alert_name.clone(),
                    resource_id: q.resource_id.clone(),
                    delivery,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let detected = self.storms.detect(&queries).await.map_err(Status::from)?;
        let window_secs = self.storms.window_secs();
        let verdicts = request
            .queries
            .iter()
            .zip(detected)
            .map(|(q, d)| {
                let v = d.verdict;
                let outcome = match v.outcome {
                    Outcome::None => pb::StormOutcome::None,
                    Outcome::Opened => pb::StormOutcome::Opened,
                    Outcome::Joined => pb::StormOutcome::Joined,
                };
                let storm_type = match v.storm {
                    None => pb::StormType::Unspecified,
                    Some(StormType::Rate) => pb::StormType::Rate,
                    Some(StormType::Pattern) => pb::StormType::Pattern,
                };
                let remediation =
                    d.storm_cr.map(|name| pb::RemediationRef { namespace: q.remediation_namespace.clone(), name });
                pb::StormVerdict {
                    outcome: outcome.into(),
                    remediation,
                    storm_type: storm_type.into(),
                    window_start_unix_ms: v.window_start,
                    storm_alert_count: v.storm_alerts,
                    resource_listed: v.resource_listed,
                    resources_omitted: v.omitted,
                    window_secs,
                }
            })
            .collect();
        Ok(Response::new(pb::DetectStormsResponse { verdicts }))
    }

    #[tracing::instrument(skip_all, fields(breakwater.component = "storm", counts = request.get_ref().counts.len()))]
    async fn count_storm_alerts(
        &self,
        request: Request<pb::CountStormAlertsRequest>,
    ) -> Result<Response<pb::CountStormAlertsResponse>, Status> {
        let counts = request.into_inner().counts;
        check_len("counts", counts.len())?;
        let counts = counts
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let name = c.remediation.map(|r| r.name).unwrap_or_default();
                if parse_storm_cr_name(&name).is_none() {
                    return Err(invalid(format!("counts[{i}].remediation.name"), "a storm CR name"));
                }
                // No webhook carries more alerts: one call must not inflate a storm's count.
                if c.alerts > breakwater_grpc::MAX_BATCH_ITEMS as u64 {
                    let most = format!("at most {}", breakwater_grpc::MAX_BATCH_ITEMS);
                    return Err(invalid(format!("counts[{i}].alerts"), &most));
                }
                let delivery = match c.delivery_key.as_str() {
                    "" => None,
                    key => Some(breakwater_signal::parse_delivery_key(key).ok_or_else(|| {
                        invalid(format!("counts[{i}].delivery_key"), "empty or 32 lower-case hex characters")
                    })?),
                };
                Ok(StormCount { name, alerts: c.alerts, delivery })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let storm_alert_counts = self.storms.count(&counts).await.map_err(Status::from)?;
        Ok(Response::new(pb::CountStormAlertsResponse { storm_alert_counts }))
    }
}

/// Longest alert name: the edge's largest label value.
const MAX_NAME_BYTES: usize = 1024 * 1024;

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
        metrics::counter!("breakwater_storm_store_errors_total", "kind" => e.metric_label()).increment(1);
        // Logged once per outage by ComponentHealth; per call only at debug level.
        tracing::debug!(cause = %e, source = ?std::error::Error::source(&e), "storm store failed");
        // The edge applies the degradation table (individual CRs) to Unavailable.
        breakwater_grpc::store_unavailable("storm store unavailable")
    }
}

#[cfg(test)]
mod tests {
    use breakwater_signal::ManualClock;
    use pb::storm_service_server::StormService as _;

    use super::*;
    use crate::{MemoryStormStore, StormConfig};

    fn burst(pods: usize) -> Request<pb::DetectStormsRequest> {
        let queries = (0..pods)
            .map(|i| pb::StormQuery {
                namespace: "ns".into(),
                alert_name: "PodCrash".into(),
                resource_id: format!("ns/Pod/p{i}"),
                remediation_namespace: "ns".into(),
                delivery_key: String::new(),
            })
            .collect();
        Request::new(pb::DetectStormsRequest { queries })
    }

    fn active(grpc: &StormGrpc) -> usize {
        grpc.storms.active_storms()
    }

    #[tokio::test]
    async fn an_active_storm_ends_with_its_window_even_without_alerts() {
        let config = StormConfig::default();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = Arc::new(MemoryStormStore::new(config.rules()));
        let grpc = StormGrpc::new(store, clock.clone(), ComponentHealth::new("storm"), config.rules());
        grpc.detect_storms(burst(4)).await.unwrap();
        assert_eq!(active(&grpc), 0, "below the pattern threshold");
        grpc.detect_storms(burst(7)).await.unwrap();
        assert_eq!(active(&grpc), 1);
        clock.advance_ms(i64::try_from(config.inactivity_secs * 1000).unwrap() - 1);
        grpc.refresh_active_storms();
        assert_eq!(active(&grpc), 1, "still inside its window");
        clock.advance_ms(1);
        grpc.refresh_active_storms();
        assert_eq!(active(&grpc), 0, "ended by inactivity");
    }

    // Issue 13: a storm's count cannot be set to anything by one call.
    #[tokio::test]
    async fn an_absurd_alert_count_is_refused_and_nothing_counted() {
        let config = StormConfig::default();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = Arc::new(MemoryStormStore::new(config.rules()));
        let grpc = StormGrpc::new(store, clock, ComponentHealth::new("storm"), config.rules());
        let verdicts = grpc.detect_storms(burst(7)).await.unwrap().into_inner().verdicts;
        let opened = verdicts.iter().find_map(|v| v.remediation.clone()).unwrap();
        let before = verdicts.iter().map(|v| v.storm_alert_count).max().unwrap();
        let name = opened.name;
        let count = |alerts| {
            let remediation = Some(pb::RemediationRef { namespace: "ns".into(), name: name.clone() });
            let counts = vec![pb::StormCount { remediation, alerts, delivery_key: String::new() }];
            Request::new(pb::CountStormAlertsRequest { counts })
        };
        let status = grpc.count_storm_alerts(count(u64::MAX)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "counts[0].alerts");
        let counted = grpc.count_storm_alerts(count(1)).await.unwrap().into_inner().storm_alert_counts;
        assert_eq!(counted, vec![before + 1], "nothing of the refused call was counted");
    }

    #[tokio::test]
    async fn a_query_for_a_bad_namespace_is_refused() {
        let config = StormConfig::default();
        let store = Arc::new(MemoryStormStore::new(config.rules()));
        let grpc = StormGrpc::new(store, Arc::new(ManualClock::new(0)), ComponentHealth::new("storm"), config.rules());
        let mut request = burst(1);
        request.get_mut().queries[0].remediation_namespace = "Kube_System".into();
        let status = grpc.detect_storms(request).await.unwrap_err();
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            "queries[0].remediation_namespace"
        );
    }
}
