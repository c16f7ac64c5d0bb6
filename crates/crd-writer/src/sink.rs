//! Where RemediationRequests are persisted: the [`RemediationSink`] trait and the one count
//! merge every backend applies.
//!
//! Backends: [`KubeSink`] (the Kubernetes API), [`DirSink`] (a directory of YAML files, the
//! embedded default) and [`MemorySink`] (in-process, for tests). Both apply [`CountUpdate::apply_to`], so counts only ever grow, however
//! often and in whatever order updates arrive.
//!
//! Creates need two more things every backend shares: [`latest_incident`], which CR of a
//! fingerprint is the incident's latest and where its life stands (open, resolved or
//! finished), and, for the dedup fallback, [`add_occurrences_to`], an increment. Unlike a count merge, an increment is not idempotent:
//! it is only for alerts that nothing else counts.

use std::time::Duration;

use async_trait::async_trait;
use breakwater_signal::UnixMillis;
use futures::StreamExt;

use crate::crd::{
    ANNOTATION_CREATED_AT, CrRef, LABEL_FINGERPRINT, LABEL_MANAGED_BY, MANAGED_BY, MANAGED_BY_REPLACED,
    OccurrenceTally, RemediationRequest, RemediationRequestSpec, label_value, time, to_i64,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub mod dir;
pub mod index;
pub mod kube;
pub mod memory;

pub use dir::DirSink;
pub use index::CrIndex;
pub use kube::KubeSink;
pub use memory::{MemorySink, SinkCalls};

/// How many sink calls a batch method keeps in flight.
pub const BATCH_CONCURRENCY: usize = 16;

/// Where a create landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub outcome: CreateOutcome,
    /// The namespace the CR is in: the requested one, or the fallback namespace when the
    /// requested one does not exist.
    pub namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// A CR of that name was already there (a retried or concurrent create): success.
    AlreadyExisted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    Updated,
    /// The CR already held counts at least as high.
    Unchanged,
    NotFound,
}

/// Counts to merge into a CR. Every field only ever raises the CR's value: merging is
/// idempotent, commutative and safe to retry. Serialized into the coalescer's journal.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CountUpdate {
    /// Dedup's count of the incident in the window that started at `window_start`
    /// (0 leaves it), merged into `deduplication.tally` (see [`OccurrenceTally`]).
    pub occurrence_count: u64,
    /// Start of the dedup window `occurrence_count` counts, Unix ms; 0 when unknown, and
    /// then `occurrenceCount` is only raised to `occurrence_count`.
    pub window_start: UnixMillis,
    /// `deduplication.lastSeen` in Unix ms (0 leaves it).
    pub last_seen: UnixMillis,
    /// `stormAlertCount` (storm CRs only; 0 leaves it).
    pub storm_alert_count: u64,
    /// Resources to add to `affectedResources` (storm CRs only), in arrival order.
    pub affected_resources: Vec<String>,
    /// `affectedResourcesOmitted` as the storm service counts it (storm CRs only).
    pub affected_resources_omitted: u64,
    /// `deduplication.resolvedAt` in Unix ms (0 leaves it).
    #[serde(default)]
    pub resolved_at: UnixMillis,
    /// The fingerprint of the incident these counts are of: an incident CR takes them only
    /// if it is that incident's (see [`check_owned`]). Empty for a storm CR's counts (a
    /// storm aggregates many fingerprints) and in journal entries written before updates
    /// named it; then only the managed-by label is checked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
}

impl CountUpdate {
    /// Folds `other` into `self`: maxima of the counts, union of the resources (capped at
    /// `cap`; a resource that does not fit counts as omitted).
    /// Both must count the same window (the coalescer keeps one entry per CR and window).
    pub fn merge(&mut self, other: &CountUpdate, cap: usize) {
        self.occurrence_count = self.occurrence_count.max(other.occurrence_count);
        self.window_start = self.window_start.max(other.window_start);
        self.resolved_at = self.resolved_at.max(other.resolved_at);
        self.last_seen = self.last_seen.max(other.last_seen);
        self.storm_alert_count = self.storm_alert_count.max(other.storm_alert_count);
        if self.fingerprint.is_empty() {
            self.fingerprint.clone_from(&other.fingerprint);
        }
        let dropped = union_capped(&mut self.affected_resources, &other.affected_resources, cap);
        self.affected_resources_omitted =
            self.affected_resources_omitted.max(other.affected_resources_omitted.saturating_add(dropped));
    }

    /// Raises `spec`'s counts to this update's; storm fields only on a storm CR. Returns
    /// whether anything changed.
    pub fn apply_to(&self, spec: &mut RemediationRequestSpec, cap: usize) -> bool {
        let before = spec.clone();
        let dedup = &mut spec.deduplication;
        let count = to_i64(self.occurrence_count);
        match (self.window_start > 0, dedup.tally.as_mut()) {
            _ if count == 0 => {}
            (true, _) => {
                let mut tally = dedup.tally.take().unwrap_or_else(|| OccurrenceTally::carrying(dedup.occurrence_count));
                tally.merge_window(self.window_start, count);
                dedup.occurrence_count = dedup.occurrence_count.max(tally.total());
                dedup.tally = Some(tally);
            }
            // A count of no known window only raises the total.
            (false, Some(tally)) => {
                if count > tally.total() {
                    tally.carried = tally.carried.saturating_add(count - tally.total());
                }
                dedup.occurrence_count = dedup.occurrence_count.max(tally.total());
            }
            (false, None) => dedup.occurrence_count = dedup.occurrence_count.max(count),
        }
        if self.last_seen > 0 {
            let last_seen = time(self.last_seen);
            if last_seen > dedup.last_seen {
                dedup.last_seen = last_seen;
            }
        }
        if self.resolved_at > 0 {
            let resolved_at = time(self.resolved_at);
            if dedup.resolved_at.as_ref().is_none_or(|at| resolved_at > *at) {
                dedup.resolved_at = Some(resolved_at);
            }
        }
        if spec.is_storm {
            // The storm service's own count merges by maximum; what was carried adds to it.
            let carried = spec.storm_alerts_carried.unwrap_or(0);
            let own = spec.storm_alert_count.unwrap_or(0).saturating_sub(carried);
            let count = own.max(to_i64(self.storm_alert_count)).saturating_add(carried);
            spec.storm_alert_count = Some(count);
            let dropped = union_capped(&mut spec.affected_resources, &self.affected_resources, cap);
            let omitted = spec
                .affected_resources_omitted
                .unwrap_or(0)
                .max(to_i64(self.affected_resources_omitted.saturating_add(dropped)));
            spec.affected_resources_omitted = Some(omitted);
        }
        *spec != before
    }

    /// Whether this update only records a resolution (it must not create a CR).
    pub fn is_resolution_only(&self) -> bool {
        self.resolved_at > 0 && self.occurrence_count == 0 && self.storm_alert_count == 0
    }

    /// Whether merging this update can change nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self { fingerprint: self.fingerprint.clone(), ..Self::default() }
    }
}

/// Refuses to change `rr` unless crd-writer manages it (its `app.kubernetes.io/managed-by`
/// label says `breakwater`, or `gateway-service`: a CR of the replaced gateway, adopted) and, for an incident CR and a non-empty `fingerprint`, it is that
/// incident's (fingerprint label and `spec.signalFingerprint` both match). Every backend calls
/// it on the CR it read before it writes a count, so a caller that can reach crd-writer
/// cannot touch a CR someone else made, nor another incident's.
///
/// # Errors
/// [`SinkError::Foreign`] naming the CR and what does not match.
pub fn check_owned(rr: &RemediationRequest, target: &CrRef, fingerprint: &str) -> Result<(), SinkError> {
    let labels = rr.metadata.labels.as_ref();
    let foreign = |why: &'static str| Err(SinkError::Foreign { target: target.to_string(), why });
    if !is_managed(rr) {
        return foreign("it is not managed by breakwater");
    }
    if fingerprint.is_empty() || rr.spec.is_storm {
        return Ok(());
    }
    let label = labels.and_then(|l| l.get(LABEL_FINGERPRINT));
    if label != Some(&label_value(fingerprint)) || rr.spec.signal_fingerprint != fingerprint {
        return foreign("it is another incident's (its fingerprint differs)");
    }
    Ok(())
}

/// `status.overallPhase` values after which the remediation controller is done with a CR.
pub const TERMINAL_PHASES: [&str; 4] = ["Completed", "Failed", "Cancelled", "Timeout"];

/// Whether the remediation controller has finished `rr`: its `status.overallPhase` is one of
/// [`TERMINAL_PHASES`] (compared exactly, as the replaced gateway did).
pub fn is_finished(rr: &RemediationRequest) -> bool {
    let phase = rr.status.as_ref().and_then(|s| s.overall_phase.as_deref()).unwrap_or("");
    TERMINAL_PHASES.contains(&phase)
}

/// Whether `rr`'s incident is still open: the remediation controller has not finished it
/// (no status, or an empty or non-terminal `overallPhase`), and it was not resolved after
/// its last occurrence.
pub fn is_open(rr: &RemediationRequest) -> bool {
    let dedup = &rr.spec.deduplication;
    let resolved = dedup.resolved_at.as_ref().is_some_and(|at| *at >= dedup.last_seen);
    !is_finished(rr) && !resolved
}

/// The latest incident CR of a fingerprint, and where its life stands: what
/// [`crate::lifecycle::Lifecycle::decide`] needs to tell whether an alert counts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestCr {
    pub at: CrRef,
    pub phase: CrPhase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrPhase {
    /// Not finished, not resolved: it counts the incident's alerts.
    Open,
    /// Resolved after its last occurrence, not finished: the next firing is a new incident.
    Resolved,
    /// Finished by the remediation controller: `status.completedAt` if it says, and the
    /// latest resolution of the incident, in Unix ms.
    Finished { completed_at: Option<UnixMillis>, resolved_at: Option<UnixMillis> },
}

impl LatestCr {
    /// Where `rr` stands; its ref is taken from its metadata.
    pub fn of(rr: &RemediationRequest) -> Self {
        let at = CrRef {
            namespace: rr.metadata.namespace.clone().unwrap_or_default(),
            name: rr.metadata.name.clone().unwrap_or_default(),
        };
        Self { at, phase: CrPhase::of(rr) }
    }
}

impl CrPhase {
    /// Where `rr`'s life stands.
    pub fn of(rr: &RemediationRequest) -> Self {
        let millis = |t: &Time| t.0.as_millisecond();
        if is_finished(rr) {
            Self::Finished {
                completed_at: rr.status.as_ref().and_then(|s| s.completed_at.as_ref()).map(millis),
                resolved_at: rr.spec.deduplication.resolved_at.as_ref().map(millis),
            }
        } else if is_open(rr) {
            Self::Open
        } else {
            Self::Resolved
        }
    }
}

/// Of `candidates`, the latest incident CR of `fingerprint` (see [`IncidentEntry::of`]): an
/// open one first; among equals the most recently created (`creationTimestamp`, then the
/// `kubernaut.io/created-at` annotation, then the name). Candidates must carry their namespace
/// and name in their metadata.
pub fn latest_incident(
    candidates: impl IntoIterator<Item = RemediationRequest>,
    fingerprint: &str,
) -> Option<LatestCr> {
    let entries: Vec<IncidentEntry> = candidates
        .into_iter()
        .filter_map(|rr| IncidentEntry::of(&rr))
        .filter(|entry| entry.fingerprint == fingerprint)
        .collect();
    latest_of(&entries)
}

/// The latest of `entries` (open first, then most recently created).
pub fn latest_of<'a>(entries: impl IntoIterator<Item = &'a IncidentEntry>) -> Option<LatestCr> {
    entries.into_iter().max_by(|a, b| a.rank().cmp(&b.rank())).map(|entry| entry.latest.clone())
}

/// What the lookup needs of one incident CR: whose it is, where its life stands and how
/// recent it is. Small, so an index of every CR costs little memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentEntry {
    pub fingerprint: String,
    pub latest: LatestCr,
    open: bool,
    created: (Option<jiff::Timestamp>, Option<jiff::Timestamp>, String),
    /// `metadata.resourceVersion` as a number (0 when there is none), to keep the newest.
    pub resource_version: u64,
}

impl IncidentEntry {
    /// `rr` as the CR of its incident, if it is one: labelled with its fingerprint (cut to a
    /// label value, as [`crate::crd::build`] writes it) and carrying it whole in
    /// `spec.signalFingerprint`, not a storm CR (a storm aggregates signals; it is not this
    /// incident's CR), managed by Breakwater or by the gateway it replaces
    /// ([`MANAGED_BY_REPLACED`], adopted at cut-over).
    pub fn of(rr: &RemediationRequest) -> Option<Self> {
        let fingerprint = &rr.spec.signal_fingerprint;
        let labelled = rr.metadata.labels.as_ref().and_then(|l| l.get(LABEL_FINGERPRINT));
        if labelled != Some(&label_value(fingerprint)) || !is_managed(rr) || rr.spec.is_storm {
            return None;
        }
        let (timestamp, created_at, name) = creation_key(rr);
        Some(Self {
            fingerprint: fingerprint.clone(),
            latest: LatestCr::of(rr),
            open: is_open(rr),
            created: (timestamp, created_at, name.unwrap_or_default().to_owned()),
            resource_version: rr.metadata.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0),
        })
    }

    fn rank(&self) -> (bool, &(Option<jiff::Timestamp>, Option<jiff::Timestamp>, String)) {
        (self.open, &self.created)
    }
}

/// Of `candidates`, the open incident CR of `fingerprint` (see [`latest_incident`]).
pub fn latest_open(
    candidates: impl IntoIterator<Item = RemediationRequest>,
    fingerprint: &str,
) -> Option<RemediationRequest> {
    let label = label_value(fingerprint);
    candidates
        .into_iter()
        .filter(|rr| {
            rr.metadata.labels.as_ref().and_then(|l| l.get(LABEL_FINGERPRINT)) == Some(&label)
                && is_managed(rr)
                && rr.spec.signal_fingerprint == fingerprint
                && !rr.spec.is_storm
                && is_open(rr)
        })
        .max_by(|a, b| creation_key(a).cmp(&creation_key(b)))
}

/// Whether `rr` is Breakwater's, or the replaced gateway's (which Breakwater adopts).
fn is_managed(rr: &RemediationRequest) -> bool {
    let managed_by = rr.metadata.labels.as_ref().and_then(|l| l.get(LABEL_MANAGED_BY)).map(String::as_str);
    matches!(managed_by, Some(MANAGED_BY | MANAGED_BY_REPLACED))
}

/// Runs `change` on the counts of a CR and, when the CR was `finished` before, adds what it
/// added to `occurrenceCount` to `occurrencesAfterCompletion`. Returns what `change` returned.
/// Every sink's count writes go through it.
pub fn change_counts(
    spec: &mut RemediationRequestSpec,
    finished: bool,
    change: impl FnOnce(&mut RemediationRequestSpec) -> bool,
) -> bool {
    let before = spec.deduplication.occurrence_count;
    if !change(spec) {
        return false;
    }
    let added = spec.deduplication.occurrence_count.saturating_sub(before);
    if finished && !spec.is_storm && added > 0 {
        let after = &mut spec.deduplication.occurrences_after_completion;
        *after = Some(after.unwrap_or(0).saturating_add(added));
    }
    true
}

fn creation_key(rr: &RemediationRequest) -> (Option<jiff::Timestamp>, Option<jiff::Timestamp>, Option<&str>) {
    let created_at = rr
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_CREATED_AT))
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    (rr.metadata.creation_timestamp.as_ref().map(|t| t.0), created_at, rr.metadata.name.as_deref())
}

/// Adds `n` alerts to `spec`'s count — `occurrenceCount`, or `stormAlertCount` on a storm CR —
/// as counted outside dedup's windows or the storm service's count, and raises its
/// `lastSeen` to `last_seen` (0 leaves it). Returns whether anything changed. Not
/// idempotent: each call counts.
pub fn add_occurrences_to(spec: &mut RemediationRequestSpec, n: u64, last_seen: UnixMillis) -> bool {
    let mut changed = false;
    if n > 0 {
        let n = to_i64(n);
        if spec.is_storm {
            spec.storm_alerts_carried = Some(spec.storm_alerts_carried.unwrap_or(0).saturating_add(n));
            spec.storm_alert_count = Some(spec.storm_alert_count.unwrap_or(0).saturating_add(n));
        } else {
            let dedup = &mut spec.deduplication;
            let mut tally = dedup.tally.take().unwrap_or_else(|| OccurrenceTally::carrying(dedup.occurrence_count));
            tally.carried = tally.carried.saturating_add(n);
            dedup.occurrence_count = dedup.occurrence_count.saturating_add(n).max(tally.total());
            dedup.tally = Some(tally);
        }
        changed = true;
    }
    let dedup = &mut spec.deduplication;
    if last_seen > 0 {
        let last_seen = time(last_seen);
        if last_seen > dedup.last_seen {
            dedup.last_seen = last_seen;
            changed = true;
        }
    }
    changed
}

/// Appends the items of `incoming` missing from `list` while it is shorter than `cap`;
/// returns how many distinct new items did not fit.
fn union_capped(list: &mut Vec<String>, incoming: &[String], cap: usize) -> u64 {
    let mut dropped = 0;
    for item in incoming {
        if list.contains(item) {
            continue;
        }
        if list.len() < cap {
            list.push(item.clone());
        } else {
            dropped += 1;
        }
    }
    dropped
}

/// Persists RemediationRequests. Held as `Arc<dyn RemediationSink>`.
///
/// Single-item methods are the primitives; the `*_batch` methods return one result per input,
/// in input order, with at most [`BATCH_CONCURRENCY`] calls in flight.
#[async_trait]
pub trait RemediationSink: Send + Sync {
    /// Creates `rr` in its namespace (or, on Kubernetes, in the fallback namespace when that
    /// namespace does not exist). An existing CR of the same name is success.
    async fn create(&self, rr: &RemediationRequest) -> Result<Created, SinkError>;

    async fn get(&self, target: &CrRef) -> Result<Option<RemediationRequest>, SinkError>;

    /// Merges `update` into the CR (see [`CountUpdate::apply_to`]); writes only on change.
    async fn update_counts(&self, target: &CrRef, update: &CountUpdate) -> Result<UpdateOutcome, SinkError>;

    /// The latest incident CR of `fingerprint` in `namespace` and its phase (see
    /// [`latest_incident`]), if any: one listing of the namespace's CRs of that fingerprint.
    /// Asked before every create of an incident, never for a repeat dedup placed.
    async fn find_latest(&self, namespace: &str, fingerprint: &str) -> Result<Option<LatestCr>, SinkError>;

    /// The open incident CR of `fingerprint` in `namespace`: [`RemediationSink::find_latest`]'s,
    /// if it is open.
    async fn find_open(&self, namespace: &str, fingerprint: &str) -> Result<Option<CrRef>, SinkError> {
        let latest = self.find_latest(namespace, fingerprint).await?;
        Ok(latest.filter(|l| l.phase == CrPhase::Open).map(|l| l.at))
    }

    /// The phase of the CR `at` of incident `fingerprint`, if the sink knows it without a
    /// request (the Kubernetes sink's index, the directory sink's last reading of the file):
    /// asked for every repeat, so it must be cheap. `None`: unknown.
    fn known_phase(&self, _at: &CrRef, _fingerprint: &str) -> Option<CrPhase> {
        None
    }

    /// Follows what others change (the remediation controller's phases) until dropped, so
    /// lookups need no request: the Kubernetes sink watches RemediationRequests into an index
    /// ([`CrIndex`]). The others read their store on every lookup: the default returns at once.
    async fn follow(&self) {}

    /// Counts `n` more occurrences on the CR and raises its `lastSeen` (see
    /// [`add_occurrences_to`]), atomically against concurrent writers, so no increment is lost.
    /// Not idempotent, unlike [`RemediationSink::update_counts`].
    async fn add_occurrences(&self, target: &CrRef, n: u64, last_seen: UnixMillis) -> Result<UpdateOutcome, SinkError>;

    async fn create_batch(&self, rrs: &[RemediationRequest]) -> Vec<Result<Created, SinkError>> {
        // Futures are lazy: collecting them first keeps BATCH_CONCURRENCY in force and spares
        // the stream a closure whose lifetimes async-trait cannot express.
        let calls: Vec<_> = rrs.iter().map(|rr| self.create(rr)).collect();
        futures::stream::iter(calls).buffered(BATCH_CONCURRENCY).collect().await
    }

    async fn update_counts_batch(&self, updates: &[(CrRef, CountUpdate)]) -> Vec<Result<UpdateOutcome, SinkError>> {
        let calls: Vec<_> = updates.iter().map(|(target, update)| self.update_counts(target, update)).collect();
        futures::stream::iter(calls).buffered(BATCH_CONCURRENCY).collect().await
    }
}

/// A sink could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The API answered with a status that retrying cannot fix (400, 403, 404, 422, ...).
    #[error("kubernetes rejected the request: {code} {reason}")]
    Rejected {
        code: u16,
        reason: String,
        #[source]
        source: ::kube::Error,
    },
    /// Retryable failures (429, 5xx, timeouts, connection errors) outlasted every attempt.
    #[error("kubernetes unavailable after {attempts} attempts")]
    Unavailable {
        attempts: u32,
        /// What the API last asked for (429 `retryAfterSeconds`), if anything.
        retry_after: Option<Duration>,
        #[source]
        source: ::kube::Error,
    },
    /// Other writers kept changing the CR between our read and our write.
    #[error("conflicting updates after {attempts} attempts")]
    Conflict { attempts: u32 },
    /// A namespace or name that is not a DNS-1123 label.
    #[error("invalid name {0:?}")]
    InvalidName(String),
    /// The CR exists but is not crd-writer's to change (see [`check_owned`]); nothing was written.
    #[error("RemediationRequest {target} was left unchanged: {why}")]
    Foreign { target: String, why: &'static str },
    #[error("remediation directory")]
    Io(#[from] std::io::Error),
    #[error("remediation file {path} is not a RemediationRequest")]
    Corrupt {
        path: String,
        #[source]
        source: Box<serde_saphyr::DeserializeError>,
    },
    #[error("rendering yaml")]
    Yaml(#[from] serde_saphyr::SerializeError),
}

impl SinkError {
    /// When the caller should try again, if the sink knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether retrying the same request can never succeed: a bad name, or a 4xx from the API
    /// server (a malformed, invalid or too large object, a method or media type it refuses), so
    /// the flusher reports it once and drops it instead of retrying it every flush for good.
    /// Not permanent: 403 and 404 (an operator can fix RBAC or create the namespace), and what
    /// asks for a retry (408, 409, 425, 429); code 0 is a client-side failure.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::InvalidName(_) | Self::Foreign { .. } => true,
            Self::Rejected { code, .. } => {
                (400..500).contains(code) && !matches!(code, 403 | 404 | 408 | 409 | 425 | 429)
            }
            _ => false,
        }
    }

    /// Bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Rejected { .. } => "rejected",
            Self::Unavailable { .. } => "unavailable",
            Self::Conflict { .. } => "conflict",
            Self::InvalidName(_) => "invalid_name",
            Self::Foreign { .. } => "foreign",
            Self::Io(_) => "io",
            Self::Corrupt { .. } => "corrupt",
            Self::Yaml(_) => "yaml",
        }
    }
}

#[cfg(test)]
mod tests;
