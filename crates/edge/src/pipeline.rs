//! The signal pipeline: ratelimit → dedup → storm → crd-writer, as plain awaited
//! steps over one [`Batch`] per webhook, each calling its component through its
//! client (a tonic client in split mode, the component's service itself in
//! `breakwater up`; both wrapped in the same tower middleware). Each step
//! annotates the batch or refuses it with a typed [`PipelineError`]. A
//! component that cannot be reached degrades its own feature only (design
//! brief, degradation table); only a CR that cannot be written fails the request.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use breakwater_grpc::{
    ComponentHealth, CrdWriterClient, DedupClient, InProcess, RateLimitClient, StormClient, TracedTransport, Transport,
};
use breakwater_limiter::{Limits, MemoryLimiter, Quota};
use breakwater_proto::v1 as pb;
use breakwater_signal::{Clock, incident_cr_name, parse_delivery_key, parse_storm_cr_name, resource_id};
use serde::Serialize;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::completed::CompletedDeliveries;
use crate::config::ComponentUrls;

/// The whole pipeline; a clone shares its steps and clients.
#[derive(Clone)]
pub struct Pipeline(Arc<Steps>);

struct Steps {
    rate_limit: RateLimitStage,
    dedup: DedupStage,
    storm: StormStage,
    write: CrdWrite,
}

impl Pipeline {
    /// Runs `batch` through ratelimit, dedup, storm and crd-writer, in that order.
    ///
    /// # Errors
    /// The sender is over its rate (nothing was recorded), or a CR could not be written.
    pub async fn process(&self, batch: Batch) -> Result<Processed, PipelineError> {
        // Refuses the whole webhook before anything is recorded, so the sender can retry it as is.
        let batch = self.0.rate_limit.check(batch).await?;
        // Must run before storm: duplicates never count towards a storm (reference §4.1).
        let batch = self.0.dedup.check(batch).await?;
        let batch = self.0.storm.check(batch).await?;
        let quota = batch.quota;
        Ok(Processed { results: self.0.write.write(batch).await?, quota })
    }
}

/// What the pipeline answers for a batch it took: one result per signal, and
/// the sender's rate-limit quota for the `RateLimit-*` headers.
#[derive(Debug, Clone)]
pub struct Processed {
    pub results: Vec<AlertResult>,
    /// `None` when no limit applies (`ratelimit.enabled = false`).
    pub quota: Option<Quota>,
}

/// The four components as the edge calls them: over each one's [`Transport`]
/// (a lazy channel) in split mode, or, in `up`, each component's service
/// implementation called directly; with the same deadline, spans and metrics
/// either way.
#[derive(Clone, Debug)]
pub struct Components {
    pub ratelimit: RateLimitClient,
    pub dedup: DedupClient,
    pub storm: StormClient,
    pub crd_writer: CrdWriterClient,
    /// The same components by name, for health and status checks (which the
    /// telemetry layer leaves untraced).
    pub transports: [(&'static str, TracedTransport); 4],
}

impl Components {
    /// Split mode: each component's replicas at `urls`, over channels that
    /// connect on first use and reconnect. A replica's connection may take
    /// half the call deadline, so a refused or unreachable one leaves time to
    /// try another.
    ///
    /// # Errors
    /// When a URL is not a valid endpoint, or a TLS file cannot be read.
    pub fn connect_lazy(urls: &ComponentUrls, timeout: Duration) -> Result<Self, breakwater_grpc::GrpcError> {
        let every = Duration::from_millis(urls.resolve_interval_ms);
        let tls = urls.tls().tonic()?;
        let replicas = |component, list: &str| Transport::replicas(component, list, timeout / 2, every, tls.clone());
        let [ratelimit, dedup, storm, crd_writer] = [
            replicas("ratelimit", &urls.ratelimit)?,
            replicas("dedup", &urls.dedup)?,
            replicas("storm", &urls.storm)?,
            replicas("crd-writer", &urls.crd_writer)?,
        ];
        Ok(Self {
            ratelimit: RateLimitClient::remote(ratelimit.clone(), "edge", timeout),
            dedup: DedupClient::remote(dedup.clone(), "edge", timeout),
            storm: StormClient::remote(storm.clone(), "edge", timeout),
            crd_writer: CrdWriterClient::remote(crd_writer.clone(), "edge", timeout),
            transports: Self::by_name([ratelimit, dedup, storm, crd_writer], timeout),
        })
    }

    /// `breakwater up`: the components of this process, in the order ratelimit,
    /// dedup, storm, crd-writer, each call bounded by `timeout`.
    ///
    /// # Errors
    /// Naming a component that did not offer its service implementation.
    pub fn in_process(components: [InProcess; 4], timeout: Duration) -> Result<Self, String> {
        let [ratelimit, dedup, storm, crd_writer] = components;
        let missing = |name: &str| format!("{name} did not hand over its service to call in process");
        let local = |c: &InProcess| c.local.clone();
        let clients = (
            local(&ratelimit)
                .and_then(|l| RateLimitClient::local(l, "edge", timeout))
                .ok_or_else(|| missing("ratelimit"))?,
            local(&dedup).and_then(|l| DedupClient::local(l, "edge", timeout)).ok_or_else(|| missing("dedup"))?,
            local(&storm).and_then(|l| StormClient::local(l, "edge", timeout)).ok_or_else(|| missing("storm"))?,
            local(&crd_writer)
                .and_then(|l| CrdWriterClient::local(l, "edge", timeout))
                .ok_or_else(|| missing("crd-writer"))?,
        );
        let transports = [ratelimit, dedup, storm, crd_writer].map(|c| c.transport);
        Ok(Self {
            ratelimit: clients.0,
            dedup: clients.1,
            storm: clients.2,
            crd_writer: clients.3,
            transports: Self::by_name(transports, timeout),
        })
    }

    fn by_name(transports: [Transport; 4], timeout: Duration) -> [(&'static str, TracedTransport); 4] {
        let [ratelimit, dedup, storm, crd_writer] = transports.map(|t| breakwater_grpc::client(t, "edge", timeout));
        [("ratelimit", ratelimit), ("dedup", dedup), ("storm", storm), ("crd-writer", crd_writer)]
    }
}

/// One webhook's signals on their way through the pipeline.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Who sent the webhook (rate-limit key).
    pub sender: String,
    pub signals: Vec<pb::Signal>,
    /// Labels and annotations every signal has unless its own map sets the key (a
    /// webhook's common ones), held and sent once.
    pub shared: Arc<pb::SharedValues>,
    /// Namespace each signal's CR goes to.
    pub targets: Vec<String>,
    /// Each signal's delivery key, if its payload identifies the delivery
    /// (see [`crate::adapters::Incoming`]); copies of a delivery count once.
    pub deliveries: Vec<Option<String>>,
    /// Dedup's verdict per signal (filled by the dedup stage).
    pub dedup: Vec<pb::DedupVerdict>,
    /// Whether dedup answered; if not, names are per fallback window and
    /// AlreadyExists means "duplicate".
    pub dedup_degraded: bool,
    /// Storm verdict per signal, for new firing incidents (filled by the storm stage).
    pub storm: Vec<Option<pb::StormVerdict>>,
    /// Whether storm could not be asked (known down): its verdicts are missing.
    pub storm_degraded: bool,
    /// Per signal: a copy of a delivery this edge already answered 2xx, with nothing left
    /// to complete (filled by the dedup stage; see [`CompletedDeliveries`]).
    pub settled: Vec<bool>,
    /// The sender's rate-limit quota after this batch (filled by the ratelimit stage).
    pub quota: Option<Quota>,
}

impl Batch {
    /// Signal `i`'s delivery key as the components take it (empty: none).
    fn delivery_key(&self, i: usize) -> String {
        self.deliveries.get(i).cloned().flatten().unwrap_or_default()
    }

    /// Signal `i`'s delivery key as a number, if it has one.
    fn delivery(&self, i: usize) -> Option<u128> {
        self.deliveries.get(i)?.as_deref().and_then(parse_delivery_key)
    }

    fn is_settled(&self, i: usize) -> bool {
        self.settled.get(i).copied().unwrap_or(false)
    }
}

/// What happened to one alert; the response lists one per alert, in order.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AlertResult {
    pub index: usize,
    pub outcome: AlertOutcome,
    pub fingerprint: String,
    pub alert_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remediation_request_namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remediation_request_name: Option<String>,
    /// Occurrences of this incident so far (dedup's exact count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurrence_count: Option<u64>,
    /// Alerts counted on the storm CR so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm_alert_count: Option<u64>,
    /// Why the alert was rejected (outcome `rejected` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The incident's environment, priority and remediation path (not for rejected alerts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remediation_path: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AlertOutcome {
    /// A new CR was created for this alert.
    Created,
    /// Counted as an occurrence on an existing CR.
    Duplicate,
    /// This alert opened a storm; the storm CR was created.
    StormCreated,
    /// Counted on an open storm's CR.
    StormAggregated,
    /// A resolution that closed its incident's window.
    Resolved,
    /// A resolution for an incident that was not open.
    ResolvedUnknown,
    /// A copy of a delivery already counted (the sender's retry, another
    /// Alertmanager peer's notification): counted once, on the CR named.
    DuplicateDelivery,
    /// The alert can never be recorded (see `reason`): nothing was recorded
    /// for it, and retrying it cannot help.
    Rejected,
}

/// Why the pipeline refused or failed a batch.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("sender rate limit exceeded")]
    RateLimited { retry_after: Duration, quota: Option<Quota> },
    #[error("remediation requests could not be written: {cause}")]
    CannotPersist { retry_after: Duration, cause: String },
}

/// What the pipeline needs besides the component clients.
pub struct PipelineParts {
    pub clock: Arc<dyn Clock>,
    /// Names of new CRs while dedup is unavailable are per window of this length.
    pub dedup_fallback_window: Duration,
    /// The limits of the in-process limiter used while ratelimit is unavailable.
    pub ratelimit_fallback: Limits,
    /// Where the edge records which components it is degrading around.
    pub health: Arc<ComponentHealth>,
}

/// Builds the pipeline over `components`.
pub fn pipeline(components: &Components, parts: PipelineParts) -> Pipeline {
    let window_ms = i64::try_from(parts.dedup_fallback_window.as_millis()).unwrap_or(i64::MAX).max(1);
    let health = parts.health;
    let rate_limit = RateLimitStage {
        client: Arc::new(components.ratelimit.clone()),
        fallback: Arc::new(MemoryLimiter::new()),
        limits: Arc::new(parts.ratelimit_fallback),
        clock: parts.clock.clone(),
        health: health.clone(),
    };
    let completed = Arc::new(CompletedDeliveries::default());
    let dedup_client = Arc::new(components.dedup.clone());
    let dedup = DedupStage {
        client: dedup_client.clone(),
        clock: parts.clock,
        window_ms,
        health: health.clone(),
        uncertain_until: Arc::new(AtomicI64::new(0)),
        completed: completed.clone(),
    };
    let storm =
        StormStage { client: Arc::new(components.storm.clone()), dedup: dedup_client.clone(), health: health.clone() };
    let write = CrdWrite { client: Arc::new(components.crd_writer.clone()), dedup: dedup_client, health, completed };
    Pipeline(Arc::new(Steps { rate_limit, dedup, storm, write }))
}

/// Records that `component` could not be used for this batch: counted per
/// call, logged once per outage (by `ComponentHealth`), shown in `/readyz`.
fn degraded(health: &ComponentHealth, component: &'static str, status: &tonic::Status, meanwhile: &str) {
    metrics::counter!("breakwater_edge_degraded_calls_total", "component" => component).increment(1);
    tracing::Span::current().record("degraded", true).record("otel.status_code", "error");
    let problem = format!("{component} is unavailable ({:?}: {}): {meanwhile}", status.code(), status.message());
    health.set(component, Some(problem));
}

const RATELIMIT_MEANWHILE: &str = "the edge's in-process limiter takes over";
const DEDUP_MEANWHILE: &str =
    "new CRs are named per fallback window and crd-writer counts repeats on the open CR it finds";
const STORM_MEANWHILE: &str = "no storm detection, every alert gets its own CR";

// Each step borrows its clients for the call: a client's clone is a stack of boxed services.
struct RateLimitStage {
    client: Arc<RateLimitClient>,
    fallback: Arc<MemoryLimiter>,
    limits: Arc<Limits>,
    clock: Arc<dyn Clock>,
    health: Arc<ComponentHealth>,
}

impl RateLimitStage {
    async fn check(&self, mut batch: Batch) -> Result<Batch, PipelineError> {
        let (client, fallback, limits) = (&*self.client, &self.fallback, &self.limits);
        let (clock, health) = (&self.clock, &self.health);
        let span = stage_span("ratelimit", batch.signals.len());
        async move {
            let signals = u32::try_from(batch.signals.len()).unwrap_or(u32::MAX);
            let namespaces = namespace_counts(&batch.targets);
            let request = pb::CheckRateLimitRequest {
                sender: batch.sender.clone(),
                signal_count: signals,
                namespaces: namespaces
                    .iter()
                    .map(|(namespace, n)| pb::NamespaceSignals { namespace: namespace.clone(), signal_count: *n })
                    .collect(),
            };
            let (allowed, retry_after_ms, quota) = match client.check_rate_limit(request).await {
                Ok(answer) => {
                    health.set("ratelimit", None);
                    let a = answer.get_ref();
                    let quota = Quota { limit: a.limit, remaining: a.remaining, reset_ms: a.reset_ms };
                    (a.allowed, a.retry_after_ms, quota)
                }
                Err(status) => {
                    degraded(health, "ratelimit", &status, RATELIMIT_MEANWHILE);
                    let charges = limits.charges(&batch.sender, signals, &namespaces);
                    let (d, quota) = fallback.check(&charges, clock.now());
                    (d.allowed, d.retry_after_ms, quota)
                }
            };
            // A limit of 0 is no limit: ratelimit is switched off.
            let quota = (quota.limit > 0).then_some(quota);
            tracing::Span::current().record("allowed", allowed);
            if allowed {
                batch.quota = quota;
                Ok(batch)
            } else {
                Err(PipelineError::RateLimited { retry_after: Duration::from_millis(retry_after_ms), quota })
            }
        }
        .instrument(span)
        .await
    }
}

/// How many of a batch's signals go to each namespace, in first-seen order.
fn namespace_counts(targets: &[String]) -> Vec<(String, u32)> {
    let mut counts: Vec<(String, u32)> = Vec::new();
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for target in targets {
        match at.get(target.as_str()) {
            Some(&i) => counts[i].1 = counts[i].1.saturating_add(1),
            None => {
                at.insert(target, counts.len());
                counts.push((target.clone(), 1));
            }
        }
    }
    counts
}

struct DedupStage {
    client: Arc<DedupClient>,
    clock: Arc<dyn Clock>,
    window_ms: i64,
    health: Arc<ComponentHealth>,
    /// Until when dedup's answers may miss incidents this edge opened without it (Unix ms):
    /// one fallback window after the edge last degraded around dedup. Meanwhile a new
    /// incident may have an open CR already, which crd-writer looks for.
    uncertain_until: Arc<AtomicI64>,
    completed: Arc<CompletedDeliveries>,
}

impl DedupStage {
    async fn check(&self, mut batch: Batch) -> Result<Batch, PipelineError> {
        let (client, clock, window_ms, health) = (&*self.client, &self.clock, self.window_ms, &self.health);
        let (uncertain_until, completed) = (&self.uncertain_until, &self.completed);
        let span = stage_span("dedup", batch.signals.len());
        async move {
            let queries: Vec<pb::DedupQuery> = (0..batch.signals.len())
                .map(|i| pb::DedupQuery {
                    fingerprint: batch.signals[i].fingerprint.clone(),
                    status: batch.signals[i].status,
                    namespace: batch.targets[i].clone(),
                    delivery_key: batch.delivery_key(i),
                })
                .collect();
            // When every signal has a delivery identity, a second try of the call is a copy
            // of the first (dedup counts each delivery once), so a replica that died with it
            // costs the sender nothing; without one, a second try could count it twice.
            let every_delivery_known = queries.iter().all(|q| !q.delivery_key.is_empty());
            let request = idempotent_if(every_delivery_known, pb::CheckSignalsRequest { queries });
            let dedup_was_up = !health.has("dedup");
            match client.check_signals(request).await {
                Ok(answer) if answer.get_ref().verdicts.len() == batch.signals.len() => {
                    health.set("dedup", None);
                    batch.dedup = answer.into_inner().verdicts;
                    batch.settled = (0..batch.signals.len())
                        .map(|i| {
                            batch.dedup[i].outcome() == pb::DedupOutcome::Copy
                                && batch.delivery(i).is_some_and(|key| completed.contains(key))
                        })
                        .collect();
                    if clock.now() < uncertain_until.load(Ordering::Relaxed) {
                        for verdict in &mut batch.dedup {
                            verdict.state_uncertain |=
                                matches!(verdict.outcome(), pb::DedupOutcome::New | pb::DedupOutcome::Copy);
                        }
                    }
                }
                Ok(_) => {
                    let status = tonic::Status::internal("dedup answered the wrong number of verdicts");
                    uncertain_until.store(clock.now().saturating_add(window_ms), Ordering::Relaxed);
                    fallback_dedup(&mut batch, clock.now(), window_ms, &status, health);
                }
                // Failed in transport while dedup was answering: it may have counted the
                // batch (it died mid-call), and degrading would count it again. Answered
                // 503; the retry's copies are recognised. Once dedup is known to be down
                // (or says its store failed: nothing applied), we degrade.
                // With replicas, dedup still answers while one that died had calls: each
                // of those may have been applied, however many failed before.
                Err(status)
                    if (dedup_was_up || breakwater_grpc::failed_mid_call(&status))
                        && !breakwater_grpc::nothing_applied(&status) =>
                {
                    uncertain_until.store(clock.now().saturating_add(window_ms), Ordering::Relaxed);
                    degraded(health, "dedup", &status, DEDUP_MEANWHILE);
                    return Err(cannot_persist(Duration::from_secs(1), format!("dedup failed mid-call: {status}")));
                }
                Err(status) => {
                    uncertain_until.store(clock.now().saturating_add(window_ms), Ordering::Relaxed);
                    fallback_dedup(&mut batch, clock.now(), window_ms, &status, health);
                }
            }
            Ok(batch)
        }
        .instrument(span)
        .await
    }
}

/// Without dedup, every firing alert is a "new" incident named after its
/// fallback window, so identical alerts share one name and Kubernetes'
/// AlreadyExists is the dedup of last resort.
fn fallback_dedup(batch: &mut Batch, now: i64, window_ms: i64, status: &tonic::Status, health: &ComponentHealth) {
    degraded(health, "dedup", status, DEDUP_MEANWHILE);
    batch.dedup_degraded = true;
    let window_start = now - now.rem_euclid(window_ms);
    batch.dedup = batch
        .signals
        .iter()
        .zip(&batch.targets)
        .map(|(s, target)| {
            if s.status() == pb::SignalStatus::Resolved {
                return pb::DedupVerdict { outcome: pb::DedupOutcome::ResolvedUnknown.into(), ..Default::default() };
            }
            pb::DedupVerdict {
                outcome: pb::DedupOutcome::New.into(),
                remediation: Some(pb::RemediationRef {
                    namespace: target.clone(),
                    name: incident_cr_name(&s.fingerprint, window_start),
                }),
                first_seen_unix_ms: window_start,
                last_seen_unix_ms: now,
                occurrence_count: 1,
                placement_pending: false,
                state_uncertain: true,
                window_ends_unix_ms: 0,
            }
        })
        .collect();
}

struct StormStage {
    client: Arc<StormClient>,
    dedup: Arc<DedupClient>,
    health: Arc<ComponentHealth>,
}

impl StormStage {
    async fn check(&self, mut batch: Batch) -> Result<Batch, PipelineError> {
        let (client, dedup, health) = (&*self.client, &*self.dedup, &self.health);
        let span = stage_span("storm", batch.signals.len());
        async move {
            batch.storm = vec![None; batch.signals.len()];
            // A call that fails in transport while storm was answering may have been applied
            // (storm died mid-call): degrading around it could count an alert twice. The
            // webhook is answered 503 instead, and its retry is a copy that storm recognises.
            // Once storm is known to be down, calls fail before reaching it, and we degrade;
            // so we do when storm itself answers that its store failed (nothing applied).
            let storm_was_up = !health.has("storm");
            let storm_up = detect_storms(client, &mut batch).await;
            if let Err(status) = &storm_up
                && (storm_was_up || breakwater_grpc::failed_mid_call(status))
                && !breakwater_grpc::nothing_applied(status)
            {
                degraded(health, "storm", status, STORM_MEANWHILE);
                return Err(cannot_persist(Duration::from_secs(1), format!("storm failed mid-call: {status}")));
            }
            // Placing this batch's new incidents first lets its own repeats resolve at once.
            let placed = place_new_incidents(dedup, &batch).await;
            let resolved = resolve_pending_repeats(dedup, &mut batch).await;
            let counted = count_storm_repeats(client, &mut batch).await;
            if let Err(status) = &counted
                && (storm_was_up || breakwater_grpc::failed_mid_call(status))
                && !breakwater_grpc::nothing_applied(status)
            {
                degraded(health, "storm", status, STORM_MEANWHILE);
                return Err(cannot_persist(Duration::from_secs(1), format!("storm failed mid-call: {status}")));
            }
            match storm_up.and(counted) {
                Ok(()) => health.set("storm", None),
                Err(status) => {
                    batch.storm_degraded = true;
                    degraded(health, "storm", &status, STORM_MEANWHILE);
                }
            }
            if let Err(status) = placed.and(resolved) {
                degraded(health, "dedup", &status, DEDUP_MEANWHILE);
            }
            Ok(batch)
        }
        .instrument(span)
        .await
    }
}

/// New firing incidents may open or join a storm. Without an answer there is
/// no storm detection: every alert gets its own CR.
async fn detect_storms(client: &StormClient, batch: &mut Batch) -> Result<(), tonic::Status> {
    let asked: Vec<usize> = (0..batch.signals.len())
        .filter(|&i| {
            batch.signals[i].status() == pb::SignalStatus::Firing && batch.dedup[i].outcome() == pb::DedupOutcome::New
        })
        .collect();
    if asked.is_empty() {
        return Ok(());
    }
    let queries = asked
        .iter()
        .map(|&i| {
            let s = &batch.signals[i];
            let (kind, name) = s.resource.as_ref().map_or(("", ""), |r| (r.kind.as_str(), r.name.as_str()));
            pb::StormQuery {
                namespace: s.namespace.clone(),
                alert_name: s.alert_name.clone(),
                resource_id: resource_id(&s.namespace, kind, name),
                remediation_namespace: batch.targets[i].clone(),
                delivery_key: batch.delivery_key(i),
            }
        })
        .collect();
    let answer = client.detect_storms(pb::DetectStormsRequest { queries }).await?.into_inner();
    if answer.verdicts.len() != asked.len() {
        return Err(tonic::Status::internal("storm answered the wrong number of verdicts"));
    }
    for (i, verdict) in asked.into_iter().zip(answer.verdicts) {
        batch.storm[i] = Some(verdict);
    }
    Ok(())
}

/// Repeats of alerts folded into a storm count on the storm's CR. Each carries
/// its delivery key, so a copy of a delivery counts only if its first attempt
/// died before storm counted it, and learns the storm's total, so the write
/// that completes a half-done first delivery carries it.
async fn count_storm_repeats(client: &StormClient, batch: &mut Batch) -> Result<(), tonic::Status> {
    let repeats: Vec<(usize, pb::RemediationRef)> = (0..batch.signals.len())
        .filter(|&i| matches!(batch.dedup[i].outcome(), pb::DedupOutcome::Duplicate | pb::DedupOutcome::Copy))
        .filter(|&i| !batch.is_settled(i))
        .filter_map(|i| {
            let r = batch.dedup[i].remediation.clone()?;
            parse_storm_cr_name(&r.name).is_some().then_some((i, r))
        })
        .collect();
    if repeats.is_empty() {
        return Ok(());
    }
    let counts: Vec<pb::StormCount> = repeats
        .iter()
        .map(|&(i, ref r)| pb::StormCount {
            remediation: Some(r.clone()),
            alerts: 1,
            delivery_key: batch.delivery_key(i),
        })
        .collect();
    // As for dedup's CheckSignals: storm remembers the deliveries it counted.
    let every_delivery_known = counts.iter().all(|c| !c.delivery_key.is_empty());
    let request = idempotent_if(every_delivery_known, pb::CountStormAlertsRequest { counts });
    let totals = client.count_storm_alerts(request).await?.into_inner().storm_alert_counts;
    if totals.len() != repeats.len() {
        return Err(tonic::Status::internal("storm answered the wrong number of counts"));
    }
    for ((i, r), total) in repeats.into_iter().zip(totals) {
        if total == 0 {
            // Storm lost that storm's count: counted like a repeat while storm is down.
            continue;
        }
        let window_start = parse_storm_cr_name(&r.name).map_or(0, |(_, start)| start);
        batch.storm[i] = Some(pb::StormVerdict {
            outcome: pb::StormOutcome::Joined.into(),
            remediation: Some(r),
            window_start_unix_ms: window_start,
            storm_alert_count: total,
            ..Default::default()
        });
    }
    Ok(())
}

/// The storm CR that took new incident `i` of `batch`, if one did.
fn storm_of_new(batch: &Batch, i: usize) -> Option<pb::RemediationRef> {
    batch.storm[i].as_ref().filter(|s| s.outcome() != pb::StormOutcome::None).and_then(|s| s.remediation.clone())
}

/// The CR that counts new incident `i` of `batch`: the storm's that took it, or its own.
fn placement_of_new(batch: &Batch, i: usize) -> pb::RemediationRef {
    storm_of_new(batch, i).unwrap_or_else(|| pb::RemediationRef {
        namespace: batch.targets[i].clone(),
        name: incident_cr_name(&batch.signals[i].fingerprint, batch.dedup[i].first_seen_unix_ms),
    })
}

/// Tells dedup which CR counts each new incident: a storm's, or its own.
/// Until then its repeats wait (see [`resolve_pending_repeats`]), so none is
/// counted on the wrong CR.
async fn place_new_incidents(dedup: &DedupClient, batch: &Batch) -> Result<(), tonic::Status> {
    if batch.dedup_degraded {
        return Ok(());
    }
    let bindings: Vec<pb::DedupBinding> = (0..batch.signals.len())
        .filter(|&i| batch.dedup[i].outcome() == pb::DedupOutcome::New)
        .map(|i| pb::DedupBinding {
            fingerprint: batch.signals[i].fingerprint.clone(),
            first_seen_unix_ms: batch.dedup[i].first_seen_unix_ms,
            remediation: storm_of_new(batch, i),
        })
        .collect();
    if bindings.is_empty() {
        return Ok(());
    }
    let dedup = dedup.clone();
    if let Err(status) = dedup
        .bind_remediations(idempotent(pb::BindRemediationsRequest { bindings: bindings.clone(), ends: Vec::new() }))
        .await
    {
        retry_bindings_later(dedup, bindings);
        return Err(status);
    }
    Ok(())
}

/// How long a placement dedup could not take is retried in the background.
const PLACEMENT_RETRY_FOR: Duration = Duration::from_secs(30);
/// Background placement retries at once, at most; more are given up at once.
const PLACEMENT_RETRIES_AT_MOST: usize = 64;
static PLACEMENT_RETRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Dedup failed between counting a new incident and taking its placement (it died mid-webhook,
/// its state kept in Redis). Until it takes the placement, the incident's repeats wait for it
/// and then fall back to the incident's own CR with dedup's count, which would count the first
/// alert a second time when a storm counted it. So the placement is retried until dedup is back
/// (each try is idempotent), bounded in time and in number.
fn retry_bindings_later(dedup: DedupClient, bindings: Vec<pb::DedupBinding>) {
    if PLACEMENT_RETRIES.fetch_add(1, Ordering::Relaxed) >= PLACEMENT_RETRIES_AT_MOST {
        PLACEMENT_RETRIES.fetch_sub(1, Ordering::Relaxed);
        metrics::counter!("breakwater_edge_placement_retries_total", "result" => "given_up").increment(1);
        return;
    }
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + PLACEMENT_RETRY_FOR;
        let mut result = "given_up";
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let request = pb::BindRemediationsRequest { bindings: bindings.clone(), ends: Vec::new() };
            if dedup.bind_remediations(idempotent(request)).await.is_ok() {
                result = "bound";
                break;
            }
        }
        if result == "given_up" {
            tracing::warn!(incidents = bindings.len(), "dedup did not take new incidents' placements within 30 s");
        }
        metrics::counter!("breakwater_edge_placement_retries_total", "result" => result).increment(1);
        PLACEMENT_RETRIES.fetch_sub(1, Ordering::Relaxed);
    });
}

/// How long a repeat waits for its incident's first alert to be placed.
const PLACEMENT_WAIT: Duration = Duration::from_secs(3);

/// Repeats that raced their incident's first alert learn where it was placed.
async fn resolve_pending_repeats(dedup: &DedupClient, batch: &mut Batch) -> Result<(), tonic::Status> {
    let mut outcome = Ok(());
    let mut pending: Vec<usize> = (0..batch.signals.len()).filter(|&i| batch.dedup[i].placement_pending).collect();
    if pending.is_empty() {
        return outcome;
    }
    // Repeats of this batch's own new incidents go where their first alert went: the edge
    // placed it itself, so dedup need not be asked (20,000 identical alerts ask nothing).
    // (Pending repeats exist only when dedup answered.)
    let placed_here: HashMap<(&str, i64), pb::RemediationRef> = (0..batch.signals.len())
        .filter(|&j| batch.dedup[j].outcome() == pb::DedupOutcome::New)
        .map(|j| {
            let (fingerprint, first_seen) = (batch.signals[j].fingerprint.as_str(), batch.dedup[j].first_seen_unix_ms);
            ((fingerprint, first_seen), placement_of_new(batch, j))
        })
        .collect();
    let mut here = Vec::new();
    pending.retain(|&i| {
        let window = (batch.signals[i].fingerprint.as_str(), batch.dedup[i].first_seen_unix_ms);
        match placed_here.get(&window) {
            Some(placement) => {
                here.push((i, placement.clone()));
                false
            }
            None => true,
        }
    });
    drop(placed_here);
    for (i, placement) in here {
        batch.dedup[i].remediation = Some(placement);
    }
    if pending.is_empty() {
        return outcome;
    }
    let deadline = tokio::time::Instant::now() + PLACEMENT_WAIT;
    while !pending.is_empty() {
        let windows = pending
            .iter()
            .map(|&i| pb::DedupWindowRef {
                fingerprint: batch.signals[i].fingerprint.clone(),
                first_seen_unix_ms: batch.dedup[i].first_seen_unix_ms,
                namespace: batch.targets[i].clone(),
            })
            .collect();
        let placements = match dedup.get_placements(idempotent(pb::GetPlacementsRequest { windows })).await {
            Ok(answer) if answer.get_ref().placements.len() == pending.len() => answer.into_inner().placements,
            Ok(_) => {
                outcome = Err(tonic::Status::internal("dedup answered the wrong number of placements"));
                break;
            }
            Err(status) => {
                outcome = Err(status);
                break;
            }
        };
        let mut still = Vec::new();
        for (i, placement) in pending.into_iter().zip(placements) {
            match placement.state() {
                pb::PlacementState::Placed => batch.dedup[i].remediation = placement.remediation,
                pb::PlacementState::Pending => still.push(i),
                // The window closed meanwhile: the incident was counted on its own CR.
                _ => {}
            }
        }
        pending = still;
        if pending.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for i in 0..batch.signals.len() {
        if batch.dedup[i].placement_pending && batch.dedup[i].remediation.is_none() {
            metrics::counter!("breakwater_edge_placement_timeouts_total").increment(1);
            let name = incident_cr_name(&batch.signals[i].fingerprint, batch.dedup[i].first_seen_unix_ms);
            batch.dedup[i].remediation = Some(pb::RemediationRef { namespace: batch.targets[i].clone(), name });
        }
    }
    outcome
}

/// The last stage: turns verdicts into CR writes and the writes' results into
/// the per-alert answer.
struct CrdWrite {
    client: Arc<CrdWriterClient>,
    /// To point dedup at the CR the dedup of last resort found (see [`rebind_found`]).
    dedup: Arc<DedupClient>,
    health: Arc<ComponentHealth>,
    completed: Arc<CompletedDeliveries>,
}

impl CrdWrite {
    async fn write(&self, mut batch: Batch) -> Result<Vec<AlertResult>, PipelineError> {
        let (client, dedup, health, completed) = (&*self.client, &*self.dedup, &self.health, &self.completed);
        let span = stage_span("crd_write", batch.signals.len());
        async move {
            let alerts = batch.signals.len();
            let mut plan = plan_batch(&mut batch);
            if let Some(why) = plan.iter().find_map(|p| p.unsettled) {
                return Err(cannot_persist(Duration::from_secs(1), why.to_owned()));
            }
            // Moved into the request; `written` says which alerts have a result, of which kind.
            let written: Vec<Option<pb::WriteKind>> = plan.iter().map(|p| p.write.as_ref().map(|w| w.kind())).collect();
            let writes: Vec<pb::RemediationWrite> = plan.iter_mut().filter_map(|p| p.write.take()).collect();
            let results = if writes.is_empty() {
                Vec::new()
            } else {
                let n = writes.len();
                let repeatable = writes.iter().all(write_is_repeatable);
                // The batch holds the only reference: moved, not copied.
                let shared = Arc::unwrap_or_clone(std::mem::take(&mut batch.shared));
                let shared = (!shared.labels.is_empty() || !shared.annotations.is_empty()).then_some(shared);
                let request = idempotent_if(repeatable, pb::WriteRemediationsRequest { writes, shared });
                let answer = client
                    .write_remediations(request)
                    .await
                    .map_err(|status| cannot_persist(Duration::from_secs(5), format!("crd-writer: {status}")))?
                    .into_inner();
                if answer.results.len() != n {
                    return Err(cannot_persist(
                        Duration::from_secs(5),
                        "crd-writer answered the wrong number of results".into(),
                    ));
                }
                answer.results
            };
            let mut results = results.into_iter();
            let mut failure: Option<(Duration, String)> = None;
            let mut found: Vec<pb::DedupBinding> = Vec::new();
            let mut ends: Vec<pb::DedupWindowEnd> = Vec::new();
            let mut out = Vec::with_capacity(plan.len());
            for (index, (p, written)) in plan.into_iter().zip(written).enumerate() {
                let mut outcome = p.outcome;
                let mut remediation = p.remediation;
                if let Some(kind) = written {
                    let result = results.next().unwrap_or_default();
                    // Where the CR really is: crd-writer may have used its fallback namespace.
                    // crd-writer counted a CREATE on its incident's open CR, found under
                    // another name (it looks for one before every create).
                    let mut found_open = false;
                    if let Some(r) = result.remediation.as_ref().filter(|r| !r.name.is_empty()) {
                        let create = kind == pb::WriteKind::Create;
                        found_open = create && r.name != remediation.1;
                        if found_open && !batch.dedup_degraded {
                            found.push(pb::DedupBinding {
                                fingerprint: p.fingerprint.clone(),
                                first_seen_unix_ms: batch.dedup[index].first_seen_unix_ms,
                                remediation: Some(r.clone()),
                            });
                        }
                        remediation = (r.namespace.clone(), r.name.clone());
                    }
                    // The CR is finished: dedup ends the window when its cooldown does, once.
                    let verdict = batch.dedup.get(index).filter(|_| !batch.dedup_degraded);
                    if let Some(verdict) = verdict
                        && result.window_ends_unix_ms != 0
                        && result.window_ends_unix_ms != verdict.window_ends_unix_ms
                    {
                        ends.push(pb::DedupWindowEnd {
                            fingerprint: p.fingerprint.clone(),
                            first_seen_unix_ms: verdict.first_seen_unix_ms,
                            ends_unix_ms: result.window_ends_unix_ms,
                        });
                    }
                    if outcome == AlertOutcome::ResolvedUnknown && !remediation.1.is_empty() {
                        // crd-writer found the incident's CR and recorded the resolution there.
                        outcome = AlertOutcome::Resolved;
                    }
                    match result.outcome() {
                        pb::WriteOutcome::Failed => {
                            let after = Duration::from_millis(result.retry_after_ms.max(1000));
                            let cause = format!("{}: {}", remediation.1, result.error);
                            failure = Some(failure.map_or((after, cause.clone()), |(a, c)| (a.max(after), c)));
                        }
                        // The dedup of last resort, or the lookup of an open CR, found the
                        // incident's CR. Otherwise (dedup vouched the incident is new) a
                        // racing repeat's count merely created its CR first.
                        pb::WriteOutcome::AlreadyExisted if p.last_resort || found_open => {
                            outcome = match outcome {
                                AlertOutcome::Created => AlertOutcome::Duplicate,
                                AlertOutcome::StormCreated => AlertOutcome::StormAggregated,
                                other => other,
                            };
                        }
                        _ => {}
                    }
                }
                out.push(AlertResult {
                    index,
                    outcome,
                    fingerprint: p.fingerprint,
                    alert_name: p.alert_name,
                    remediation_request_namespace: Some(remediation.0).filter(|s| !s.is_empty()),
                    remediation_request_name: Some(remediation.1).filter(|s| !s.is_empty()),
                    occurrence_count: p.occurrence_count,
                    storm_alert_count: p.storm_alert_count,
                    reason: None,
                    // Filled in by the caller, which classified the alert.
                    environment: None,
                    priority: None,
                    remediation_path: None,
                });
            }
            if let Err(status) = rebind_found(dedup, found, ends).await {
                degraded(health, "dedup", &status, DEDUP_MEANWHILE);
            }
            match failure {
                Some((retry_after, cause)) => {
                    tracing::Span::current().record("otel.status_code", "error");
                    Err(cannot_persist(retry_after, cause))
                }
                None => {
                    completed.insert_all((0..alerts).filter_map(|i| batch.delivery(i)));
                    Ok(out)
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// crd-writer found an incident's open CR under another name than dedup's window names (the
/// CR outlived a window, or dedup lost its state): dedup counts the window's next alerts
/// there, so the incident keeps one CR. Once per window at most. And crd-writer said that
/// a window's CR is finished: dedup ends the window when the cooldown after the finish
/// does, so the first alert after it opens a new CR (once per window and finish).
async fn rebind_found(
    dedup: &DedupClient,
    bindings: Vec<pb::DedupBinding>,
    ends: Vec<pb::DedupWindowEnd>,
) -> Result<(), tonic::Status> {
    if bindings.is_empty() && ends.is_empty() {
        return Ok(());
    }
    dedup.clone().bind_remediations(idempotent(pb::BindRemediationsRequest { bindings, ends })).await?;
    Ok(())
}

/// `message` as a call that may be sent again to another replica when the one
/// that took it failed before answering: applying it twice changes nothing.
fn idempotent<T>(message: T) -> tonic::Request<T> {
    idempotent_if(true, message)
}

/// `message` as a call, [`idempotent`] when `repeatable`.
fn idempotent_if<T>(repeatable: bool, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if repeatable {
        request.extensions_mut().insert(breakwater_grpc::Idempotent);
    }
    request
}

/// Whether crd-writer applies `write` once however often it arrives: creates
/// are create-if-missing and counts are absolute, merged by maximum. Not so an
/// alert counted while storm was down, or one the dedup of last resort adds to
/// a CR it finds: each adds one.
fn write_is_repeatable(write: &pb::RemediationWrite) -> bool {
    let adds_one = write.storm_unavailable || (write.dedup_unavailable && !write.dedup_window_exact);
    !adds_one
}

fn cannot_persist(retry_after: Duration, cause: String) -> PipelineError {
    PipelineError::CannotPersist { retry_after, cause }
}

/// One span per stage and batch, under the request's span.
fn stage_span(stage: &'static str, signals: usize) -> tracing::Span {
    tracing::info_span!(
        "pipeline",
        otel.name = %format_args!("pipeline.{stage}"),
        otel.status_code = Empty,
        breakwater.component = "edge",
        breakwater.stage = stage,
        signals = u64::try_from(signals).unwrap_or(u64::MAX),
        degraded = Empty,
        allowed = Empty,
    )
}

impl AlertOutcome {
    /// The `outcome` label of `breakwater_signals_total`.
    pub fn label(self) -> &'static str {
        match self {
            AlertOutcome::Created => "created",
            AlertOutcome::Duplicate => "duplicate",
            AlertOutcome::StormCreated => "storm_created",
            AlertOutcome::StormAggregated => "storm_aggregated",
            AlertOutcome::Resolved => "resolved",
            AlertOutcome::ResolvedUnknown => "resolved_unknown",
            AlertOutcome::DuplicateDelivery => "duplicate_delivery",
            AlertOutcome::Rejected => "rejected",
        }
    }
}

/// What to write for one alert, and how to report it.
struct Planned {
    /// The alert's fingerprint and name, for its result (its signal moved into `write`).
    fingerprint: String,
    alert_name: String,
    write: Option<pb::RemediationWrite>,
    /// The CREATE asks crd-writer for the dedup of last resort: dedup could not
    /// vouch that the incident is new.
    last_resort: bool,
    outcome: AlertOutcome,
    remediation: (String, String),
    occurrence_count: Option<u64>,
    storm_alert_count: Option<u64>,
    /// Why this alert cannot be answered yet: the webhook is answered 503, and its retry
    /// (a copy) settles it.
    unsettled: Option<&'static str>,
}

/// Plans every alert of `batch`. A copy completes its CR only once per batch, and not at
/// all when an alert of the batch creates or counts on that CR anyway: a retried
/// notification of 20,000 identical alerts is one write, not 20,000.
///
/// The signals move out of `batch` into the writes: a write carries its alert's signal, and
/// copying every label and annotation of every alert cost more than planning them.
fn plan_batch(batch: &mut Batch) -> Vec<Planned> {
    let signals = std::mem::take(&mut batch.signals);
    let mut plans: Vec<Planned> = signals.into_iter().enumerate().map(|(i, signal)| plan(batch, i, signal)).collect();
    let mut written: HashSet<(String, String)> = plans
        .iter()
        .filter(|p| p.write.is_some() && p.outcome != AlertOutcome::DuplicateDelivery)
        .map(|p| p.remediation.clone())
        .collect();
    for p in plans.iter_mut().filter(|p| p.write.is_some() && p.outcome == AlertOutcome::DuplicateDelivery) {
        if !written.insert(p.remediation.clone()) {
            p.write = None;
        }
    }
    plans
}

/// A copy of a delivery already counted adds nothing, but completes what its
/// first delivery may have left half-done (it was answered 5xx, or its edge
/// died): "create if missing, then count", with the absolute counts, so
/// doing it again changes nothing.
fn plan_copy(batch: &Batch, i: usize, base: pb::RemediationWrite) -> Planned {
    let dedup = &batch.dedup[i];
    let (fingerprint, alert_name) =
        base.signal.as_ref().map(|s| (s.fingerprint.clone(), s.alert_name.clone())).unwrap_or_default();
    let reported = |r: &pb::RemediationRef, write, occurrence_count, storm_alert_count| Planned {
        fingerprint: fingerprint.clone(),
        alert_name: alert_name.clone(),
        write,
        last_resort: false,
        outcome: AlertOutcome::DuplicateDelivery,
        remediation: (r.namespace.clone(), r.name.clone()),
        occurrence_count,
        storm_alert_count,
        unsettled: None,
    };
    let Some(target) = dedup.remediation.as_ref() else {
        // Its incident is closed: the first delivery's CR was written, or it
        // was resolved meanwhile; there is nothing left to complete.
        return reported(&pb::RemediationRef::default(), None, None, None);
    };
    if batch.is_settled(i) {
        // This edge answered the first delivery 2xx: its writes were all made.
        let occurrences = parse_storm_cr_name(&target.name).is_none().then_some(dedup.occurrence_count);
        return reported(target, None, occurrences, None);
    }
    if parse_storm_cr_name(&target.name).is_some() {
        return match batch.storm[i].as_ref() {
            Some(storm) => {
                let write = pb::RemediationWrite {
                    kind: pb::WriteKind::StormAdd.into(),
                    remediation: Some(target.clone()),
                    storm_window_start_unix_ms: storm.window_start_unix_ms,
                    storm_window_secs: storm.window_secs,
                    storm_alert_count: storm.storm_alert_count,
                    ..base
                };
                reported(target, Some(write), None, Some(storm.storm_alert_count))
            }
            // Storm lost that storm's count: the first delivery was counted (by storm, or
            // carried on the CR); nothing is left to complete.
            None if !batch.storm_degraded => reported(target, None, None, None),
            // Storm is down: whether the first delivery reached it (it may have died mid-call)
            // is unknown until it answers again, so the copy waits for it (503).
            None => Planned {
                unsettled: Some("storm is unavailable to settle a copy of a storm alert"),
                ..reported(target, None, None, None)
            },
        };
    }
    // Dedup may have lost incidents: the first delivery may have found an open CR under
    // another name, so the copy looks for it too.
    let last_resort = dedup.state_uncertain;
    let write = pb::RemediationWrite {
        kind: pb::WriteKind::Create.into(),
        remediation: Some(target.clone()),
        dedup_unavailable: last_resort,
        dedup_window_exact: last_resort,
        ..base
    };
    Planned { last_resort, ..reported(target, Some(write), Some(dedup.occurrence_count), None) }
}

/// Repeats of a window up to this count carry their whole signal, so one that races its
/// incident's first alert can create the CR if that alert's create has not landed; later
/// ones find the CR made (see `signal_identity_only` in `crd_writer.proto`).
const WHOLE_SIGNAL_REPEATS: u64 = 3;

/// `write` with only its signal's identity, for a write that never builds a CR: counts and
/// resolutions.
fn identity_only(mut write: pb::RemediationWrite) -> pb::RemediationWrite {
    write.signal = write.signal.map(|signal| pb::Signal {
        fingerprint: signal.fingerprint,
        alert_name: signal.alert_name,
        received_time_unix_ms: signal.received_time_unix_ms,
        ..Default::default()
    });
    write.signal_identity_only = true;
    write
}

fn plan(batch: &Batch, i: usize, signal: pb::Signal) -> Planned {
    let dedup = &batch.dedup[i];
    let dedup_ref = dedup.remediation.clone().unwrap_or_default();
    let (fingerprint, alert_name) = (signal.fingerprint.clone(), signal.alert_name.clone());
    let received_at = signal.received_time_unix_ms;
    let base = pb::RemediationWrite {
        signal: Some(signal),
        first_seen_unix_ms: dedup.first_seen_unix_ms,
        last_seen_unix_ms: dedup.last_seen_unix_ms,
        occurrence_count: dedup.occurrence_count,
        ..Default::default()
    };
    // Dedup cannot vouch that no CR is open for this incident: crd-writer looks first.
    let last_resort = batch.dedup_degraded || dedup.state_uncertain;
    let reported = |outcome, r: &pb::RemediationRef, write: Option<pb::RemediationWrite>| Planned {
        fingerprint: fingerprint.clone(),
        alert_name: alert_name.clone(),
        write,
        last_resort: false,
        outcome,
        remediation: (r.namespace.clone(), r.name.clone()),
        occurrence_count: None,
        storm_alert_count: None,
        unsettled: None,
    };
    match dedup.outcome() {
        pb::DedupOutcome::Copy => plan_copy(batch, i, base),
        // The incident's own CR records the resolution, so no lookup ever counts on it again.
        // A storm's CR does not: one resource resolved is not the storm.
        pb::DedupOutcome::Resolved if !dedup_ref.name.is_empty() && parse_storm_cr_name(&dedup_ref.name).is_none() => {
            let write = pb::RemediationWrite {
                kind: pb::WriteKind::Resolution.into(),
                remediation: Some(dedup_ref.clone()),
                last_seen_unix_ms: received_at,
                ..base
            };
            reported(AlertOutcome::Resolved, &dedup_ref, Some(identity_only(write)))
        }
        pb::DedupOutcome::Resolved => reported(AlertOutcome::Resolved, &dedup_ref, None),
        // Dedup no longer holds the incident (its window closed, or it never saw the firing):
        // crd-writer records the resolution on the incident's latest CR, if there is one, so
        // a finished CR knows it was resolved after it finished.
        pb::DedupOutcome::ResolvedUnknown | pb::DedupOutcome::Unspecified => {
            let write = pb::RemediationWrite {
                kind: pb::WriteKind::Resolution.into(),
                remediation: Some(pb::RemediationRef { namespace: batch.targets[i].clone(), name: String::new() }),
                find_by_fingerprint: true,
                last_seen_unix_ms: received_at,
                ..base
            };
            reported(AlertOutcome::ResolvedUnknown, &dedup_ref, Some(identity_only(write)))
        }
        pb::DedupOutcome::Duplicate if parse_storm_cr_name(&dedup_ref.name).is_some() => {
            match batch.storm[i].as_ref() {
                Some(storm) => {
                    let write = pb::RemediationWrite {
                        kind: pb::WriteKind::StormAdd.into(),
                        remediation: Some(dedup_ref.clone()),
                        storm_window_start_unix_ms: storm.window_start_unix_ms,
                        storm_window_secs: storm.window_secs,
                        storm_alert_count: storm.storm_alert_count,
                        ..base
                    };
                    Planned {
                        storm_alert_count: Some(storm.storm_alert_count),
                        ..reported(AlertOutcome::StormAggregated, &dedup_ref, Some(write))
                    }
                }
                None => {
                    // The storm service could not count it (degraded): crd-writer adds one to
                    // the storm CR's carried count, which the storm service's counts add to.
                    let write = pb::RemediationWrite {
                        kind: pb::WriteKind::StormAdd.into(),
                        remediation: Some(dedup_ref.clone()),
                        storm_window_start_unix_ms: parse_storm_cr_name(&dedup_ref.name).map_or(0, |(_, at)| at),
                        storm_unavailable: true,
                        ..base
                    };
                    reported(AlertOutcome::StormAggregated, &dedup_ref, Some(write))
                }
            }
        }
        pb::DedupOutcome::Duplicate => {
            let write = pb::RemediationWrite {
                kind: pb::WriteKind::Occurrence.into(),
                remediation: Some(dedup_ref.clone()),
                ..base
            };
            let write = if dedup.occurrence_count > WHOLE_SIGNAL_REPEATS { identity_only(write) } else { write };
            Planned {
                occurrence_count: Some(dedup.occurrence_count),
                ..reported(AlertOutcome::Duplicate, &dedup_ref, Some(write))
            }
        }
        pb::DedupOutcome::New => match batch.storm[i].as_ref().filter(|s| s.outcome() != pb::StormOutcome::None) {
            None => {
                let write = pb::RemediationWrite {
                    kind: pb::WriteKind::Create.into(),
                    remediation: Some(dedup_ref.clone()),
                    dedup_unavailable: last_resort,
                    dedup_window_exact: last_resort && !batch.dedup_degraded,
                    ..base
                };
                Planned {
                    occurrence_count: Some(1),
                    last_resort,
                    ..reported(AlertOutcome::Created, &dedup_ref, Some(write))
                }
            }
            Some(storm) => {
                let storm_ref = storm.remediation.clone().unwrap_or_default();
                let (kind, outcome) = if storm.outcome() == pb::StormOutcome::Opened {
                    (pb::WriteKind::StormCreate, AlertOutcome::StormCreated)
                } else {
                    (pb::WriteKind::StormAdd, AlertOutcome::StormAggregated)
                };
                let write = pb::RemediationWrite {
                    kind: kind.into(),
                    remediation: Some(storm_ref.clone()),
                    storm_type: storm.storm_type,
                    storm_window_start_unix_ms: storm.window_start_unix_ms,
                    storm_window_secs: storm.window_secs,
                    storm_alert_count: storm.storm_alert_count,
                    resource_listed: storm.resource_listed,
                    resources_omitted: storm.resources_omitted,
                    ..base
                };
                Planned {
                    storm_alert_count: Some(storm.storm_alert_count),
                    ..reported(outcome, &storm_ref, Some(write))
                }
            }
        },
    }
}

#[cfg(test)]
mod tests;
