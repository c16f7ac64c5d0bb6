//! The Kubernetes sink: RemediationRequests through the API server.
//!
//! Every request is retried with exponential backoff on 429, 500, 502, 503, 504, timeouts and
//! connection errors, and never on 400/403/404/409/413/422, nor on etcd's 500 `request is too
//! large` (reported, like a 413, as `Rejected` with code 413: the same object never fits). A
//! pause the server asks for is honoured: its `Retry-After` header, which is all the pause a
//! max-inflight or priority-and-fairness 429 carries (its body is plain text, not a `Status`),
//! or a `Status`'s `details.retryAfterSeconds`. Requests go through `Client::send` rather than
//! `Api`, because kube's `Api` drops the response headers.
//!
//! A create whose namespace does not exist is repeated in the fallback namespace (reference
//! spec §7.2). Count updates are read-merge-patch with `metadata.resourceVersion` as
//! precondition; a 409 Conflict re-reads and merges again. The dedup fallback's increments take
//! the same path, so concurrent increments are all counted; its lookup of an open CR is one
//! `list` by the fingerprint label.
//!
//! A retry may meet its own earlier attempt, committed although its answer was lost (a 504, a
//! reset connection). Count merges are idempotent, so that is harmless for them. The others
//! carry an operation id, so the retry can tell:
//! - each create stamps [`ANNOTATION_CREATE_OP`]; an AlreadyExists after a retry reads the CR
//!   and reports `Created` when it carries our id, so the caller counts the alert once;
//! - each increment adds its id to [`ANNOTATION_COUNT_OPS`] in the same merge patch; a read
//!   that finds our id there means the increment is in, and it is not applied again.

use std::future::Future;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use breakwater_signal::UnixMillis;
use kube::api::{GetParams, ListParams, Patch, PatchParams, PostParams};
use kube::client::Body;
use kube::core::response::StatusDetails;
use kube::core::{ObjectList, Request, Status};
use kube::{Client, Error as KubeError, Resource as _};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::Instrument as _;
use tracing::field::Empty;

use super::{
    CountUpdate, CrIndex, CrPhase, CreateOutcome, Created, LatestCr, RemediationSink, SinkError, UpdateOutcome,
    add_occurrences_to, change_counts, check_owned, is_finished, latest_incident,
};
use crate::config::RetryConfig;
use crate::crd::{CrRef, LABEL_FINGERPRINT, RemediationRequest, RemediationRequestSpec, label_value, relocate};

/// Default `affectedResources` cap, as `crd_writer.affected_resources_cap`.
const DEFAULT_CAP: usize = 100;
/// Read-merge-patch rounds before a count update gives up on concurrent writers.
const MAX_CONFLICT_ATTEMPTS: u32 = 10;
/// An API server asking for a longer pause than this is capped, so a flush cannot stall.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// The operation id of the create that made the CR.
pub const ANNOTATION_CREATE_OP: &str = "breakwater.io/create-op";
/// The operation ids of the latest increments applied to the CR, oldest first.
pub const ANNOTATION_COUNT_OPS: &str = "breakwater.io/count-ops";
/// Increment ids kept in [`ANNOTATION_COUNT_OPS`]. An increment whose answer was lost is
/// recognised on its retry unless this many other increments landed on the CR in between.
const KEPT_COUNT_OPS: usize = 32;

pub struct KubeSink {
    client: Client,
    retry: RetryConfig,
    fallback_namespace: String,
    cap: usize,
    /// Incident CRs as the watch ([`RemediationSink::follow`]) and our writes last saw them.
    index: CrIndex,
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
        Self {
            client,
            retry,
            fallback_namespace: fallback_namespace.into(),
            cap: DEFAULT_CAP,
            index: CrIndex::default(),
        }
    }

    /// Caps `affectedResources` at `cap` entries (default 100).
    #[must_use]
    pub fn with_resource_cap(mut self, cap: usize) -> Self {
        self.cap = cap;
        self
    }

    /// Requests on the RemediationRequests of `namespace`.
    fn requests(namespace: &str) -> Request {
        Request::new(RemediationRequest::url_path(&(), Some(namespace)))
    }

    /// Sends `request` and decodes the answer, as `kube::Client::request` does, except that an
    /// error answer's `Retry-After` header is kept (see [`api_error`]).
    async fn send<T: DeserializeOwned>(
        &self,
        verb: &'static str,
        request: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<T, KubeError> {
        let mut request = request.map_err(KubeError::BuildRequest)?;
        // kube's own trace layer names its span after this, as `Api` does.
        request.extensions_mut().insert(verb);
        let response = self.client.send(request.map(Body::from)).await?;
        let code = response.status();
        let retry_after =
            response.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = response.into_body().collect_bytes().await?;
        if code.is_client_error() || code.is_server_error() {
            return Err(api_error(code.as_u16(), &body, retry_after.as_deref()));
        }
        serde_json::from_slice(&body).map_err(KubeError::SerdeError)
    }

    async fn get_opt(&self, target: &CrRef) -> Result<Option<RemediationRequest>, KubeError> {
        let request = Self::requests(&target.namespace).get(&target.name, &GetParams::default());
        match self.send("get", request).await {
            Ok(rr) => Ok(Some(rr)),
            Err(KubeError::Api(status)) if status.is_not_found() => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Runs `op` until it succeeds, fails for good, or runs out of attempts.
    async fn call<T, F, Fut>(&self, verb: &'static str, op: F) -> Result<T, SinkError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, KubeError>>,
    {
        self.call_counted(verb, op).await.0
    }

    /// [`call`](Self::call), also saying how many attempts it took: after more than one, an
    /// earlier attempt may have been committed although its answer was lost.
    async fn call_counted<T, F, Fut>(&self, verb: &'static str, op: F) -> (Result<T, SinkError>, u32)
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
                Ok(value) => return (Ok(value), attempt),
                Err(err) => err,
            };
            if !is_retryable(&err) {
                let rejected = match err {
                    KubeError::Api(status) if is_too_large(&status) => SinkError::Rejected {
                        code: 413,
                        reason: "RequestEntityTooLarge".to_owned(),
                        source: KubeError::Api(status),
                    },
                    KubeError::Api(status) => SinkError::Rejected {
                        code: status.code,
                        reason: status.reason.clone(),
                        source: KubeError::Api(status),
                    },
                    other => SinkError::Rejected { code: 0, reason: "client".to_owned(), source: other },
                };
                return (Err(rejected), attempt);
            }
            let retry_after = retry_after(&err);
            if attempt >= max_attempts {
                return (Err(SinkError::Unavailable { attempts: attempt, retry_after, source: err }), attempt);
            }
            let delay = retry_after.unwrap_or_else(|| self.retry.backoff(attempt));
            tracing::debug!(verb, attempt, delay_ms = delay.as_millis(), cause = %err, "retrying kubernetes request");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn create_in(&self, namespace: &str, rr: &RemediationRequest) -> Result<Created, SinkError> {
        let op = operation_id();
        let mut stamped = rr.clone();
        stamped.metadata.annotations.get_or_insert_default().insert(ANNOTATION_CREATE_OP.to_owned(), op.clone());
        let body = serde_json::to_vec(&stamped).map_err(|err| SinkError::Rejected {
            code: 0,
            reason: "serialize".to_owned(),
            source: KubeError::SerdeError(err),
        })?;
        let requests = Self::requests(namespace);
        let params = PostParams::default();
        let created = |outcome| Created { outcome, namespace: namespace.to_owned() };
        let (result, attempts) = self
            .call_counted("create", || {
                self.send::<RemediationRequest>("create", requests.create(&params, body.clone()))
            })
            .await;
        match result {
            Ok(rr) => {
                self.index.upsert(&rr);
                Ok(created(CreateOutcome::Created))
            }
            Err(err) if status_of(&err).is_some_and(Status::is_already_exists) => {
                // Only a retried create can have met itself; a first attempt never does.
                if attempts > 1 {
                    let target =
                        CrRef { namespace: namespace.to_owned(), name: rr.metadata.name.clone().unwrap_or_default() };
                    let existing = self.get(&target).await?;
                    if existing.is_some_and(|cr| create_op_of(&cr) == Some(op.as_str())) {
                        tracing::debug!(%target, "an earlier attempt of this create was committed");
                        return Ok(created(CreateOutcome::Created));
                    }
                }
                Ok(created(CreateOutcome::AlreadyExisted))
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
        self.call("get", || self.get_opt(target)).await
    }

    #[tracing::instrument(skip_all, fields(breakwater.component = "crd-writer", %target))]
    async fn update_counts(&self, target: &CrRef, update: &CountUpdate) -> Result<UpdateOutcome, SinkError> {
        self.read_modify_write(target, &update.fingerprint, None, |spec| update.apply_to(spec, self.cap)).await
    }

    #[tracing::instrument(skip_all, fields(breakwater.component = "crd-writer", %namespace))]
    async fn find_latest(&self, namespace: &str, fingerprint: &str) -> Result<Option<LatestCr>, SinkError> {
        if let Some(latest) = self.index.latest(namespace, fingerprint) {
            return Ok(latest);
        }
        let requests = Self::requests(namespace);
        let params = ListParams::default().labels(&format!("{LABEL_FINGERPRINT}={}", label_value(fingerprint)));
        let list: ObjectList<RemediationRequest> =
            self.call("list", || self.send("list", requests.list(&params))).await?;
        let items = list.items.into_iter().map(|mut rr| {
            rr.metadata.namespace.get_or_insert_with(|| namespace.to_owned());
            rr
        });
        Ok(latest_incident(items, fingerprint))
    }

    fn known_phase(&self, at: &CrRef, fingerprint: &str) -> Option<CrPhase> {
        self.index.phase(at, fingerprint)
    }

    /// Watches every RemediationRequest into the index, listing again (with backoff) when the
    /// watch fails; a failure is logged once per episode.
    async fn follow(&self) {
        use futures::StreamExt as _;
        use kube::runtime::WatchStreamExt as _;

        let api: kube::Api<RemediationRequest> = kube::Api::all(self.client.clone());
        let mut events =
            kube::runtime::watcher(api, kube::runtime::watcher::Config::default()).default_backoff().boxed();
        let mut failing = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    // A relist begins with `Init` before it has reached the API server.
                    let reached = !matches!(event, kube::runtime::watcher::Event::Init);
                    if reached && std::mem::take(&mut failing) {
                        tracing::info!("watching RemediationRequests again");
                    }
                    self.index.apply(event);
                }
                Err(err) if !failing => {
                    failing = true;
                    // What changed meanwhile is unknown until the watch lists again.
                    self.index.unsync();
                    tracing::warn!(cause = %err, "watching RemediationRequests failed; lookups list by label meanwhile");
                }
                Err(err) => tracing::debug!(cause = %err, "watching RemediationRequests still fails"),
            }
        }
    }

    #[tracing::instrument(skip_all, fields(breakwater.component = "crd-writer", %target, n))]
    async fn add_occurrences(&self, target: &CrRef, n: u64, last_seen: UnixMillis) -> Result<UpdateOutcome, SinkError> {
        let op = operation_id();
        self.read_modify_write(target, "", Some(&op), |spec| add_occurrences_to(spec, n, last_seen)).await
    }
}

impl KubeSink {
    /// Reads the CR, changes its counts with `change` (which says whether it changed anything)
    /// and merge-patches them with the read `resourceVersion` as precondition; on 409 Conflict
    /// reads and changes again, so a change is applied exactly once to the latest counts.
    ///
    /// A change that is not idempotent (an increment) passes its operation id `op`: the patch
    /// records it in [`ANNOTATION_COUNT_OPS`], and a read that finds it there (a retry after a
    /// lost answer, then a 409 because our own write moved the resourceVersion) stops at once.
    /// Only a CR crd-writer may change for `fingerprint` is changed ([`check_owned`]).
    async fn read_modify_write(
        &self,
        target: &CrRef,
        fingerprint: &str,
        op: Option<&str>,
        change: impl Fn(&mut RemediationRequestSpec) -> bool + Send + Sync,
    ) -> Result<UpdateOutcome, SinkError> {
        let requests = Self::requests(&target.namespace);
        let params = PatchParams::default();
        for attempt in 1..=MAX_CONFLICT_ATTEMPTS {
            let Some(current) = self.get(target).await? else {
                return Ok(UpdateOutcome::NotFound);
            };
            check_owned(&current, target, fingerprint)?;
            let applied = count_ops_of(&current);
            if let Some(op) = op
                && applied.contains(&op)
            {
                tracing::debug!(attempt, "an earlier attempt of this increment was committed");
                return Ok(UpdateOutcome::Updated);
            }
            let mut spec = current.spec.clone();
            if !change_counts(&mut spec, is_finished(&current), &change) {
                return Ok(UpdateOutcome::Unchanged);
            }
            let mut patch = count_patch(&spec, current.metadata.resource_version.as_deref());
            if let Some(op) = op {
                let skip = (applied.len() + 1).saturating_sub(KEPT_COUNT_OPS);
                let ops: Vec<&str> = applied.into_iter().skip(skip).chain([op]).collect();
                patch["metadata"]["annotations"] = json!({ ANNOTATION_COUNT_OPS: ops.join(" ") });
            }
            let patch = Patch::Merge(patch);
            let sent = self
                .call("patch", || {
                    self.send::<RemediationRequest>("patch", requests.patch(&target.name, &params, &patch))
                })
                .await;
            match sent {
                Ok(rr) => {
                    self.index.upsert(&rr);
                    return Ok(UpdateOutcome::Updated);
                }
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
                "tally": spec.deduplication.tally,
                "resolvedAt": spec.deduplication.resolved_at,
                "occurrencesAfterCompletion": spec.deduplication.occurrences_after_completion,
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

/// The create operation id stamped on `rr`, if any.
fn create_op_of(rr: &RemediationRequest) -> Option<&str> {
    rr.metadata.annotations.as_ref()?.get(ANNOTATION_CREATE_OP).map(String::as_str)
}

/// The increment operation ids recorded on `rr`, oldest first.
fn count_ops_of(rr: &RemediationRequest) -> Vec<&str> {
    rr.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_COUNT_OPS))
        .map(|ops| ops.split_whitespace().collect())
        .unwrap_or_default()
}

/// A fresh operation id: 16 hex digits, unique across calls and processes.
fn operation_id() -> String {
    // RandomState is keyed randomly per thread (and so per process); the sequence keeps two
    // ids of one thread apart. Enough for uniqueness without a random-number crate.
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(SEQUENCE.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", hasher.finish())
}

/// A random pause of up to 5 ms × 2^attempt (at most 320 ms) after a lost update race.
fn conflict_pause(attempt: u32) -> Duration {
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

/// A write too large to store: the API server's 413, or etcd's refusal, which it passes on as a
/// 500.
fn is_too_large(status: &Status) -> bool {
    status.code == 413 || status.message.contains("etcdserver: request is too large")
}

fn is_retryable(err: &KubeError) -> bool {
    match err {
        KubeError::Api(status) if is_too_large(status) => false,
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

/// The error for an answer with status `code`: its `Status` body, or one made up from a body
/// that is not one (as kube does: the API server's 429s are plain text). A `Retry-After` of
/// whole seconds goes into `details.retryAfterSeconds` unless the body already set it, so
/// [`retry_after`] finds it wherever the server put it. An HTTP-date `Retry-After` is
/// ignored: the API server sends seconds.
fn api_error(code: u16, body: &[u8], retry_after: Option<&str>) -> KubeError {
    let mut status = serde_json::from_slice::<Status>(body).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(body);
        Status::failure(text.trim(), "Failed to parse error data").with_code(code)
    });
    if status.code == 0 {
        // JSON that is not a Status (a proxy's, say) has no code of its own.
        status.code = code;
    }
    if let Some(secs) = retry_after.and_then(|v| v.trim().parse::<u32>().ok()).filter(|s| *s > 0) {
        let details = status.details.get_or_insert_with(|| StatusDetails {
            name: String::new(),
            group: String::new(),
            kind: String::new(),
            uid: String::new(),
            causes: Vec::new(),
            retry_after_seconds: 0,
        });
        if details.retry_after_seconds == 0 {
            details.retry_after_seconds = secs;
        }
    }
    KubeError::Api(Box::new(status))
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
