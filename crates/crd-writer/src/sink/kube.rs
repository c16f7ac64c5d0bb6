//! The Kubernetes sink: RemediationRequests through the API server.
//!
//! Every request is retried with exponential backoff on 429 (honouring the Status body's
//! `details.retryAfterSeconds`), 500, 502, 503, 504, timeouts and connection errors, and never
//! on 400/403/404/409/422. A create whose namespace does not exist is repeated in the fallback
//! namespace (reference spec §7.2). Count updates are read-merge-patch with
//! `metadata.resourceVersion` as precondition; a 409 Conflict re-reads and merges again. The
//! dedup fallback's increments take the same path, so concurrent increments are all counted;
//! its lookup of an open CR is one `list` by the fingerprint label.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use breakwater_signal::UnixMillis;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::Status;
use kube::{Client, Error as KubeError};
use serde_json::json;
use tracing::Instrument as _;
use tracing::field::Empty;

use super::{
    CountUpdate, CreateOutcome, Created, RemediationSink, SinkError, UpdateOutcome, add_occurrences_to, latest_open,
};
use crate::config::RetryConfig;
use crate::crd::{CrRef, LABEL_FINGERPRINT, RemediationRequest, RemediationRequestSpec, label_value, relocate};

/// Default `affectedResources` cap, as `crd_writer.affected_resources_cap`.
const DEFAULT_CAP: usize = 100;
/// Read-merge-patch rounds before a count update gives up on concurrent writers.
const MAX_CONFLICT_ATTEMPTS: u32 = 10;
/// An API server asking for a longer pause than this is capped, so a flush cannot stall.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

pub struct KubeSink {
    client: Client,
    retry: RetryConfig,
    fallback_namespace: String,
    cap: usize,
}

impl std::fmt::Debug for KubeSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSink")
            .field("retry", &self.retry)
            .field("fallback_namespace", &self.fallback_namespace)
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

impl KubeSink {
    /// A sink on `client`. CRs whose namespace is missing go to `fallback_namespace`.
    pub fn new(client: Client, retry: RetryConfig, fallback_namespace: impl Into<String>) -> Self {
        Self { client, retry, fallback_namespace: fallback_namespace.into(), cap: DEFAULT_CAP }
    }

    /// Caps `affectedResources` at `cap` entries (default 100).
    #[must_use]
    pub fn with_resource_cap(mut self, cap: usize) -> Self {
        self.cap = cap;
        self
    }

    fn api(&self, namespace: &str) -> Api<RemediationRequest> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Runs `op` until it succeeds, fails for good, or runs out of attempts.
    async fn call<T, F, Fut>(&self, verb: &'static str, op: F) -> Result<T, SinkError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, KubeError>>,
    {
        let max_attempts = self.retry.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            // One client span per attempt; the API server sees no trace context (it has no use for it).
            let span = tracing::info_span!(
                "kubernetes",
                otel.name = %format_args!("{verb} remediationrequests"),
                otel.kind = "client",
                otel.status_code = Empty,
                k8s.verb = verb,
                k8s.resource = "remediationrequests.remediation.kubernaut.io",
                k8s.attempt = attempt,
                http.response.status_code = Empty,
                breakwater.component = "crd-writer",
            );
            let start = std::time::Instant::now();
            let result = op().instrument(span.clone()).await;
            metrics::histogram!("breakwater_kubernetes_request_duration_seconds", "verb" => verb)
                .record(start.elapsed().as_secs_f64());
            let code = record_request(verb, &result);
            span.record("http.response.status_code", code.as_str());
            if result.is_err() {
                span.record("otel.status_code", "error");
            }
            let err = match result {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            if !is_retryable(&err) {
                return Err(match err {
                    KubeError::Api(status) => SinkError::Rejected {
                        code: status.code,
                        reason: status.reason.clone(),
                        source: KubeError::Api(status),
                    },
                    other => SinkError::Rejected { code: 0, reason: "client".to_owned(), source: other },
                });
            }
            let retry_after = retry_after(&err);
            if attempt >= max_attempts {
                return Err(SinkError::Unavailable { attempts: attempt, retry_after, source: err });
            }
            let delay = retry_after.unwrap_or_else(|| self.retry.backoff(attempt));
            tracing::debug!(verb, attempt, delay_ms = delay.as_millis(), cause = %err, "retrying kubernetes request");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn create_in(&self, namespace: &str, rr: &RemediationRequest) -> Result<Created, SinkError> {
        let api = self.api(namespace);
        let params = PostParams::default();
        match self.call("create", || api.create(&params, rr)).await {
            Ok(_) => Ok(Created { outcome: CreateOutcome::Created, namespace: namespace.to_owned() }),
            Err(err) if status_of(&err).is_some_and(Status::is_already_exists) => {
                Ok(Created { outcome: CreateOutcome::AlreadyExisted, namespace: namespace.to_owned() })
            }
            Err(err) => Err(err),
        }
    }
}

#[async_trait]
impl RemediationSink for KubeSink {
    #[tracing::instrument(skip_all, fields(breakwater.component = "crd-writer", namespace = rr.metadata.namespace.as_deref(), name = rr.metadata.name.as_deref()))]
    async fn create(&self, rr: &RemediationRequest) -> Result<Created, SinkError> {
        let namespace = rr.metadata.namespace.clone().unwrap_or_default();
        if namespace.is_empty() {
            let mut moved = rr.clone();
            relocate(&mut moved, &self.fallback_namespace);
            return self.create_in(&self.fallback_namespace, &moved).await;
        }
        match self.create_in(&namespace, rr).await {
            Err(err) if namespace != self.fallback_namespace && is_namespace_missing(&err) => {
                tracing::warn!(%namespace, fallback = %self.fallback_namespace, "namespace missing, creating in fallback");
                let mut moved = rr.clone();
                relocate(&mut moved, &self.fallback_namespace);
                self.create_in(&self.fallback_namespace, &moved).await
            }
            other => other,
        }
    }

    async fn get(&self, target: &CrRef) -> Result<Option<RemediationRequest>, SinkError> {
        let api = self.api(&target.namespace);
        self.call("get", || api.get_opt(&target.name)).await
    }

    #[tracing::instrument(skip_all, fields(breakwater.component = "crd-writer", %target))]
    async fn update_counts(&self, target: &CrRef, update: &CountUpdate) -> Result<UpdateOutcome, SinkError> {
        self.read_modify_write(target, |spec| update.apply_to(spec, self.cap)).await
    }

    #[tracing::instrument(skip_all, fields(breakwater.component = "crd-writer", %namespace))]
    async fn find_open(&self, namespace: &str, fingerprint: &str) -> Result<Option<CrRef>, SinkError> {
        let api = self.api(namespace);
        let params = ListParams::default().labels(&format!("{LABEL_FINGERPRINT}={}", label_value(fingerprint)));
        let list = self.call("list", || api.list(&params)).await?;
        Ok(latest_open(list.items, fingerprint).map(|rr| CrRef {
            namespace: rr.metadata.namespace.unwrap_or_else(|| namespace.to_owned()),
            name: rr.metadata.name.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all, fields(breakwater.component = "crd-writer", %target, n))]
    async fn add_occurrences(&self, target: &CrRef, n: u64, last_seen: UnixMillis) -> Result<UpdateOutcome, SinkError> {
        self.read_modify_write(target, |spec| add_occurrences_to(spec, n, last_seen)).await
    }
}

impl KubeSink {
    /// Reads the CR, changes its counts with `change` (which says whether it changed anything)
    /// and merge-patches them with the read `resourceVersion` as precondition; on 409 Conflict
    /// reads and changes again, so a change is applied exactly once to the latest counts.
    async fn read_modify_write(
        &self,
        target: &CrRef,
        change: impl Fn(&mut RemediationRequestSpec) -> bool + Send + Sync,
    ) -> Result<UpdateOutcome, SinkError> {
        let api = self.api(&target.namespace);
        let params = PatchParams::default();
        for attempt in 1..=MAX_CONFLICT_ATTEMPTS {
            let Some(current) = self.get(target).await? else {
                return Ok(UpdateOutcome::NotFound);
            };
            let mut spec = current.spec.clone();
            if !change(&mut spec) {
                return Ok(UpdateOutcome::Unchanged);
            }
            let patch = Patch::Merge(count_patch(&spec, current.metadata.resource_version.as_deref()));
            match self.call("patch", || api.patch(&target.name, &params, &patch)).await {
                Ok(_) => return Ok(UpdateOutcome::Updated),
                Err(err) if status_of(&err).is_some_and(Status::is_conflict) => {
                    tracing::debug!(attempt, "resourceVersion conflict, merging again");
                    // Jitter spreads writers that collided, so one of them wins the next round.
                    tokio::time::sleep(conflict_pause(attempt)).await;
                }
                Err(err) if status_of(&err).is_some_and(Status::is_not_found) => return Ok(UpdateOutcome::NotFound),
                Err(err) => return Err(err),
            }
        }
        Err(SinkError::Conflict { attempts: MAX_CONFLICT_ATTEMPTS })
    }
}

/// A JSON merge patch setting the count fields of `spec`, guarded by `resource_version`.
fn count_patch(spec: &RemediationRequestSpec, resource_version: Option<&str>) -> serde_json::Value {
    let mut patch = json!({
        "spec": {
            "deduplication": {
                "occurrenceCount": spec.deduplication.occurrence_count,
                "lastSeen": spec.deduplication.last_seen,
            },
        },
    });
    if spec.is_storm {
        patch["spec"]["stormAlertCount"] = json!(spec.storm_alert_count);
        patch["spec"]["affectedResources"] = json!(spec.affected_resources);
        patch["spec"]["affectedResourcesOmitted"] = json!(spec.affected_resources_omitted);
    }
    if let Some(rv) = resource_version {
        patch["metadata"] = json!({ "resourceVersion": rv });
    }
    patch
}

/// A random pause of up to 5 ms × 2^attempt (at most 320 ms) after a lost update race.
fn conflict_pause(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let ceiling_ms = 5u64 << attempt.min(6);
    // A fresh RandomState is randomly keyed: enough randomness for jitter without a crate.
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    Duration::from_millis(random % (ceiling_ms + 1))
}

fn status_of(err: &SinkError) -> Option<&Status> {
    match err {
        SinkError::Rejected { source: KubeError::Api(status), .. } => Some(status),
        _ => None,
    }
}

/// 404 about the namespace itself (`details.kind: namespaces`), not about the CR.
fn is_namespace_missing(err: &SinkError) -> bool {
    status_of(err).is_some_and(|s| {
        s.is_not_found()
            && (s.details.as_ref().is_some_and(|d| d.kind == "namespaces")
                || (s.message.contains("namespaces") && s.message.contains("not found")))
    })
}

fn is_retryable(err: &KubeError) -> bool {
    match err {
        KubeError::Api(status) => {
            matches!(status.code, 429 | 500 | 502 | 503 | 504)
                || matches!(
                    status.reason.as_str(),
                    "TooManyRequests" | "ServerTimeout" | "Timeout" | "ServiceUnavailable"
                )
        }
        // Connection refused or reset, timeouts of the client's own layers.
        KubeError::HyperError(_) | KubeError::Service(_) => true,
        _ => false,
    }
}

fn retry_after(err: &KubeError) -> Option<Duration> {
    match err {
        KubeError::Api(status) => status
            .details
            .as_ref()
            .map(|d| d.retry_after_seconds)
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(u64::from(s)).min(MAX_RETRY_AFTER)),
        _ => None,
    }
}

fn record_request<T>(verb: &'static str, result: &Result<T, KubeError>) -> String {
    let code = match result {
        Ok(_) if verb == "create" => "201".to_owned(),
        Ok(_) => "200".to_owned(),
        Err(KubeError::Api(status)) => status.code.to_string(),
        Err(_) => "error".to_owned(),
    };
    metrics::counter!("breakwater_kubernetes_requests_total", "verb" => verb, "code" => code.clone()).increment(1);
    code
}
