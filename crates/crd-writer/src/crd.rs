//! The RemediationRequest custom resource and how one write becomes one CR.
//!
//! [`RemediationRequest`] is the only source of its CRD: [`crd_yaml`] renders it and a test
//! keeps `deploy/crd.yaml` in step. The schema is the reference gateway's (spec §7.1), so an
//! existing remediation controller keeps working; the one addition is the optional
//! `affectedResourcesOmitted`, the number of storm resources that did not fit the capped
//! `affectedResources` list.
//!
//! [`build`] is a pure function of (write, now): no I/O, no clock. It reads the proto
//! `Signal` directly because the CR carries the signal almost verbatim; a mirror type would
//! only copy its thirteen fields once more.

use std::collections::BTreeMap;
use std::sync::Arc;

use breakwater_proto::v1 as pb;
use breakwater_signal::{Layered, UnixMillis};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Kubernetes allows at most this many characters in a label value.
pub const LABEL_VALUE_MAX: usize = 63;
/// `signalAnnotations` values are cut to this many bytes (reference spec §7.2).
pub const ANNOTATION_VALUE_MAX_BYTES: usize = 262_000;

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_SIGNAL_TYPE: &str = "kubernaut.io/signal-type";
pub const LABEL_FINGERPRINT: &str = "kubernaut.io/signal-fingerprint";
pub const LABEL_SEVERITY: &str = "kubernaut.io/severity";
pub const LABEL_ENVIRONMENT: &str = "kubernaut.io/environment";
pub const LABEL_PRIORITY: &str = "kubernaut.io/priority";
pub const LABEL_STORM: &str = "kubernaut.io/storm";
/// On a CR moved to the fallback namespace: the namespace it was meant for (empty for a
/// cluster-scoped signal, which is a valid label value and cannot be a namespace name).
pub const LABEL_ORIGIN_NAMESPACE: &str = "kubernaut.io/origin-namespace";
/// On a CR moved to the fallback namespace, as the reference gateway marks it.
pub const LABEL_CLUSTER_SCOPED: &str = "kubernaut.io/cluster-scoped";
pub const ANNOTATION_CREATED_AT: &str = "kubernaut.io/created-at";
/// How automatic the remediation may be (aggressive, moderate, conservative or manual), as
/// the edge classified the incident; the reference gateway answered it but stored it nowhere.
pub const ANNOTATION_REMEDIATION_PATH: &str = "kubernaut.io/remediation-path";
/// Lists what was cut to keep a CR and its values within their caps: the edge's cuts
/// (`labels.<key>`, `annotations.<key>`, carried in the signal's annotation of this name)
/// and this builder's (`providerData`, `originalPayload`, `signalAnnotations`,
/// `signalLabels`), comma-separated.
pub const ANNOTATION_TRUNCATED: &str = "kubernaut.io/truncated";
/// Largest CR, in bytes of its JSON form: well under the API server's 1.5 MiB object limit,
/// with room for the status and counts that later updates add.
pub const CR_MAX_BYTES: usize = 256 * 1024;
pub const MANAGED_BY: &str = "breakwater";
/// The `app.kubernetes.io/managed-by` value of the gateway Breakwater replaces (reference
/// §7.2): its open CRs are adopted, so repeats of their incidents count on them.
pub const MANAGED_BY_REPLACED: &str = "gateway-service";

/// Spec of a RemediationRequest: one incident (or one storm) for the remediation controller.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "remediation.kubernaut.io",
    version = "v1alpha1",
    kind = "RemediationRequest",
    namespaced,
    status = "RemediationRequestStatus",
    derive = "PartialEq",
    doc = "A signal (alert or event), deduplicated and storm-aggregated, that asks for remediation.",
    // The JSON form: repeating `printcolumn(name = .., type_ = ..)` trips clippy's
    // duplicated_attributes on the nested keys.
    printcolumn = r#"{"name": "Signal", "type": "string", "jsonPath": ".spec.signalName"}"#,
    printcolumn = r#"{"name": "Severity", "type": "string", "jsonPath": ".spec.severity"}"#,
    printcolumn = r#"{"name": "Priority", "type": "string", "jsonPath": ".spec.priority"}"#,
    printcolumn = r#"{"name": "Occurrences", "type": "integer", "jsonPath": ".spec.deduplication.occurrenceCount"}"#,
    printcolumn = r#"{"name": "Storm", "type": "boolean", "jsonPath": ".spec.isStorm"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RemediationRequestSpec {
    /// Lower-case hex SHA-256 of the incident; for a storm, of its first signal.
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"), length(max = 64))]
    pub signal_fingerprint: String,
    /// The alert name or event reason.
    #[schemars(length(max = 253))]
    pub signal_name: String,
    pub severity: Severity,
    /// The signal's `environment` label as-is, or `unknown`.
    #[schemars(length(min = 1, max = 63))]
    pub environment: String,
    pub priority: Priority,
    /// `prometheus-alert` or `kubernetes-event`.
    pub signal_type: String,
    /// The monitoring system that sent the signal.
    #[schemars(length(max = 63))]
    pub signal_source: String,
    pub target_type: TargetType,
    pub firing_time: Time,
    pub received_time: Time,
    pub deduplication: Deduplication,
    #[serde(default)]
    pub is_storm: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm_type: Option<StormType>,
    /// The storm window's length, a duration (`1m`), as in the reference CRD: the window
    /// closes this long after its last alert (`storm.inactivity_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm_window: Option<String>,
    /// When the storm window opened (Breakwater's; the reference CRD has no such field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm_window_start: Option<Time>,
    /// Alerts counted on this storm CR, the opening one included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm_alert_count: Option<i64>,
    /// Of `stormAlertCount`, the alerts counted while the storm service could not count them
    /// (it was unavailable). They add to the storm service's own count, which merges by
    /// maximum, so neither overwrites the other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm_alerts_carried: Option<i64>,
    /// Resources of the storm (`ns:Kind:name`), capped in length.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affected_resources: Vec<String>,
    /// Distinct storm resources that are not listed in `affectedResources` because the list
    /// is capped. Listed plus omitted is the number of distinct resources seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affected_resources_omitted: Option<i64>,
    /// Labels of the signal, values cut to 63 characters.
    #[serde(default)]
    pub signal_labels: BTreeMap<String, String>,
    /// Annotations of the signal, values cut to 262000 bytes.
    #[serde(default)]
    pub signal_annotations: BTreeMap<String, String>,
    /// JSON `{"namespace","resource":{"kind","name","namespace"},"labels"}`, base64 on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "byte"))]
    pub provider_data: Option<ByteString>,
    /// The alert or event as the sender posted it, base64 on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "byte"))]
    pub original_payload: Option<ByteString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_config: Option<TimeoutConfig>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Warning => "warning",
            Self::Info => "info",
        }
    }

    /// Unspecified becomes `warning`, as the reference adapters default it (spec §2.1).
    pub fn from_proto(severity: pb::Severity) -> Self {
        match severity {
            pb::Severity::Critical => Self::Critical,
            pb::Severity::Info => Self::Info,
            pb::Severity::Warning | pb::Severity::Unspecified => Self::Warning,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Priority {
    P0,
    P1,
    P2,
    P3,
}

impl Priority {
    /// `P0`..`P3`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::P0, Self::P1, Self::P2, Self::P3].into_iter().find(|p| p.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::P0 => "P0",
            Self::P1 => "P1",
            Self::P2 => "P2",
            Self::P3 => "P3",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetType {
    Kubernetes,
    Aws,
    Azure,
    Gcp,
    Datadog,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StormType {
    /// More than N alerts in the window.
    Rate,
    /// More than M distinct resources in the window.
    Pattern,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deduplication {
    /// Always false on CRs Breakwater writes: duplicates are counted, not created.
    #[serde(default)]
    pub is_duplicate: bool,
    pub first_seen: Time,
    pub last_seen: Time,
    /// Signals of this incident so far, the first included.
    pub occurrence_count: i64,
    /// The name of the incident's previous CR (same namespace), when this one was opened
    /// after that one finished (see the README's "An incident's life follows its CR").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_remediation_request_ref: Option<String>,
    /// Of `occurrenceCount`, the occurrences counted after the remediation controller had
    /// finished this CR (a terminal `status.overallPhase`), within the cooldown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurrences_after_completion: Option<i64>,
    /// How `occurrenceCount` adds up (Breakwater's bookkeeping; absent on CRs of other
    /// gateways).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tally: Option<OccurrenceTally>,
    /// When the incident's latest resolution arrived. A firing after it is a new incident
    /// with a CR of its own, so this CR no longer collects occurrences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Time>,
}

/// How `occurrenceCount` adds up, so counts from different sources add up instead of one
/// overwriting another: dedup's exact count of the window now counting the incident (and of
/// the window before it), merged by maximum so retries and reordering change nothing, plus
/// occurrences counted outside dedup's windows (while dedup was unavailable, and counts a CR
/// had before it was tallied), which only ever add.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OccurrenceTally {
    /// Start of dedup's current window for this incident, Unix ms.
    pub window_start_ms: i64,
    /// Dedup's count in that window.
    pub window_count: i64,
    /// The window before it, and its count: a late update of it still merges.
    #[serde(default)]
    pub previous_window_start_ms: i64,
    #[serde(default)]
    pub previous_window_count: i64,
    /// Occurrences counted outside dedup's windows, and windows before the previous one.
    #[serde(default)]
    pub carried: i64,
}

impl OccurrenceTally {
    /// The tally of a CR that has none yet: what it counted so far is carried.
    pub fn carrying(occurrence_count: i64) -> Self {
        Self { carried: occurrence_count, ..Self::default() }
    }

    /// The `occurrenceCount` it adds up to.
    pub fn total(&self) -> i64 {
        self.window_count.saturating_add(self.previous_window_count).saturating_add(self.carried)
    }

    /// Merges dedup's count `count` of the window that started at `start`. A newer window
    /// (dedup lost its state and counts from 1 again) moves the current one back; one older
    /// than both windows held was carried already. Returns whether anything changed.
    pub fn merge_window(&mut self, start: i64, count: i64) -> bool {
        if start == self.window_start_ms {
            let changed = count > self.window_count;
            self.window_count = self.window_count.max(count);
            changed
        } else if start > self.window_start_ms {
            self.carried = self.carried.saturating_add(self.previous_window_count);
            self.previous_window_start_ms = self.window_start_ms;
            self.previous_window_count = self.window_count;
            self.window_start_ms = start;
            self.window_count = count;
            true
        } else if start == self.previous_window_start_ms {
            let changed = count > self.previous_window_count;
            self.previous_window_count = self.previous_window_count.max(count);
            changed
        } else {
            false
        }
    }
}

/// Per-phase timeouts for the remediation controller (Go durations such as `15m`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation_processing_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai_analysis_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_execution_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overall_workflow_timeout: Option<String>,
}

/// Written by the remediation controller, never by Breakwater.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationRequestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overall_phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation_processing_ref: Option<ObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai_analysis_ref: Option<ObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_execution_ref: Option<ObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_notification_sent: Option<bool>,
}

/// The CRD as YAML, exactly what `deploy/crd.yaml` holds.
///
/// # Errors
/// When the YAML serializer fails, which only a bug can cause.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    serde_saphyr::to_string(&RemediationRequest::crd())
}

/// Namespace and name of one RemediationRequest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CrRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for CrRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a write asks of a CR (the four `WRITE_KIND_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Create the CR of a new incident.
    Create,
    /// Count a duplicate on an existing CR (created if it does not exist).
    Occurrence,
    /// Create the CR of a storm that just opened.
    StormCreate,
    /// Count an alert on an open storm's CR.
    StormAdd,
    /// Record that the incident was resolved (never creates a CR).
    Resolution,
    /// Record that the incident was resolved on its latest CR, looked up by fingerprint in
    /// the target's namespace (the target names no CR): dedup no longer held the incident.
    LateResolution,
}

impl WriteKind {
    /// Bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Occurrence => "occurrence",
            Self::StormCreate => "storm_create",
            Self::StormAdd => "storm_add",
            Self::Resolution => "resolution",
            Self::LateResolution => "late_resolution",
        }
    }

    /// Creates are applied at once; counts are coalesced.
    pub fn is_create(self) -> bool {
        matches!(self, Self::Create | Self::StormCreate)
    }

    /// Whether the write records a resolution.
    pub fn is_resolution(self) -> bool {
        matches!(self, Self::Resolution | Self::LateResolution)
    }

    /// Whether the write is about a storm's CR.
    pub fn is_storm(self) -> bool {
        matches!(self, Self::StormCreate | Self::StormAdd)
    }
}

/// The storm part of a storm write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StormWrite {
    /// Unknown for repeats of folded alerts (`STORM_ADD` from a duplicate).
    pub storm_type: Option<StormType>,
    pub window_start: UnixMillis,
    /// The window's length (it closes this long after its last alert); 0: unknown.
    pub window_secs: u64,
    /// Alerts counted on the storm CR so far, this one included.
    pub alert_count: u64,
    /// Whether this signal's resource belongs in `affectedResources`.
    pub resource_listed: bool,
    /// Distinct resources of the storm that did not fit the storm service's capped list.
    pub resources_omitted: u64,
}

/// One validated write (see `grpc.rs` for the proto form).
#[derive(Debug, Clone)]
pub struct Write {
    pub kind: WriteKind,
    pub target: CrRef,
    pub signal: pb::Signal,
    /// Labels and annotations the signal has unless its own maps set the key: those its
    /// batch shares, held once for all its writes.
    pub shared: Arc<pb::SharedValues>,
    pub first_seen: UnixMillis,
    pub last_seen: UnixMillis,
    /// Exact count known to dedup (monotonic per window); 0 when unknown.
    pub occurrence_count: u64,
    /// Set for [`WriteKind::StormCreate`] and [`WriteKind::StormAdd`].
    pub storm: Option<StormWrite>,
    /// The signal carries only its identity (fingerprint, alert name, received time): no CR
    /// is ever built from this write. Only counts and resolutions may be sent so.
    pub identity_only: bool,
}

/// The CR `write` asks for, as of `now`.
///
/// A target without a namespace (a cluster-scoped signal) lands in `fallback_namespace` with
/// the origin labels of [`relocate`]. Counts are those of the write (at least 1 occurrence);
/// callers holding newer counts merge them with `CountUpdate::apply_to`.
pub fn build(write: &Write, now: UnixMillis, fallback_namespace: &str) -> RemediationRequest {
    let signal = &write.signal;
    let signal_labels = Layered::new(&signal.labels, &write.shared.labels);
    let severity = Severity::from_proto(signal.severity());
    // The edge classifies every signal; a signal without a classification (from a caller
    // of crd-writer's own API) gets the fixed table.
    let environment = if signal.environment.is_empty() {
        environment(signal_labels)
    } else {
        truncate_chars(&signal.environment, 63).to_owned()
    };
    let priority = Priority::parse(&signal.priority).unwrap_or_else(|| priority(severity, &environment));
    let received_ms = nonzero(signal.received_time_unix_ms).unwrap_or(now);
    let firing_ms = nonzero(signal.firing_time_unix_ms).unwrap_or(received_ms);
    let storm = write.storm.as_ref();
    let first_seen_ms =
        nonzero(write.first_seen).or_else(|| storm.and_then(|s| nonzero(s.window_start))).unwrap_or(received_ms);
    let last_seen_ms = nonzero(write.last_seen).unwrap_or(received_ms).max(first_seen_ms);

    let mut labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_COMPONENT.to_owned(), "remediation".to_owned()),
        (LABEL_SIGNAL_TYPE.to_owned(), label_value(&signal.source_type)),
        (LABEL_FINGERPRINT.to_owned(), label_value(&signal.fingerprint)),
        (LABEL_SEVERITY.to_owned(), severity.as_str().to_owned()),
        (LABEL_ENVIRONMENT.to_owned(), label_value(&environment)),
        (LABEL_PRIORITY.to_owned(), priority.as_str().to_owned()),
    ]);
    if storm.is_some() {
        labels.insert(LABEL_STORM.to_owned(), "true".to_owned());
    }

    let spec = RemediationRequestSpec {
        signal_fingerprint: signal.fingerprint.clone(),
        signal_name: truncate_chars(&signal.alert_name, 253).to_owned(),
        severity,
        environment,
        priority,
        signal_type: signal.source_type.clone(),
        signal_source: truncate_chars(&signal.source, 63).to_owned(),
        target_type: TargetType::Kubernetes,
        firing_time: time(firing_ms),
        received_time: time(received_ms),
        deduplication: Deduplication {
            is_duplicate: false,
            first_seen: time(first_seen_ms),
            last_seen: time(last_seen_ms),
            occurrence_count: to_i64(write.occurrence_count.max(1)),
            previous_remediation_request_ref: None,
            occurrences_after_completion: None,
            // A storm CR's own occurrence is its first alert; its alerts are `stormAlertCount`.
            tally: storm.is_none().then(|| OccurrenceTally {
                window_start_ms: first_seen_ms,
                window_count: to_i64(write.occurrence_count.max(1)),
                ..OccurrenceTally::default()
            }),
            resolved_at: None,
        },
        is_storm: storm.is_some(),
        storm_type: storm.and_then(|s| s.storm_type),
        storm_window: storm.and_then(|s| duration(s.window_secs)),
        storm_window_start: storm.map(|s| time(s.window_start)),
        storm_alert_count: storm.map(|s| to_i64(s.alert_count.max(1))),
        storm_alerts_carried: None,
        affected_resources: match storm {
            Some(s) if s.resource_listed => vec![signal_resource_id(signal)],
            _ => Vec::new(),
        },
        affected_resources_omitted: storm.map(|s| to_i64(s.resources_omitted)),
        signal_labels: signal_labels
            .iter()
            .map(|(k, v)| (k.to_owned(), truncate_chars(v, LABEL_VALUE_MAX).to_owned()))
            .collect(),
        signal_annotations: Layered::new(&signal.annotations, &write.shared.annotations)
            .iter()
            .map(|(k, v)| (k.to_owned(), truncate_bytes(v, ANNOTATION_VALUE_MAX_BYTES).to_owned()))
            .collect(),
        provider_data: Some(ByteString(provider_data(signal, signal_labels))),
        original_payload: Some(ByteString(signal.original_payload.clone())),
        timeout_config: None,
    };

    let mut rr = RemediationRequest {
        metadata: ObjectMeta {
            name: Some(write.target.name.clone()),
            namespace: Some(write.target.namespace.clone()),
            labels: Some(labels),
            annotations: Some(remediation_annotations(now, &signal.remediation_path)),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    };
    if write.target.namespace.is_empty() {
        relocate(&mut rr, fallback_namespace);
    } else if signal.namespace.is_empty() {
        // The edge already placed a signal without a namespace in its fallback namespace.
        mark_origin(&mut rr, "");
    }
    fit(&mut rr, signal.annotations.get(ANNOTATION_TRUNCATED).map(String::as_str));
    rr
}

fn remediation_annotations(now: UnixMillis, remediation_path: &str) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::from([(ANNOTATION_CREATED_AT.to_owned(), time(now).0.to_string())]);
    if !remediation_path.is_empty() {
        annotations.insert(ANNOTATION_REMEDIATION_PATH.to_owned(), truncate_chars(remediation_path, 63).to_owned());
    }
    annotations
}

/// A duration as Kubernetes and Go write them (`1m`, `90s`, `1h30m`), as the reference CRD's
/// `stormWindow` holds; `None` for 0 (unknown).
fn duration(secs: u64) -> Option<String> {
    if secs == 0 {
        return None;
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    Some(out)
}

/// What [`fit`] keeps of a long `originalPayload` before it cuts annotations.
const PAYLOAD_KEPT_BYTES: usize = 16 * 1024;

/// What [`fit`] aims for: [`CR_MAX_BYTES`] less room for the truncation marker it adds last.
const FIT_BYTES: usize = CR_MAX_BYTES - 2 * 1024;

fn json_len(rr: &RemediationRequest) -> usize {
    serde_json::to_vec(rr).map_or(usize::MAX, |json| json.len())
}

/// Cuts `rr` to [`CR_MAX_BYTES`], least useful first, and lists what was cut (with the
/// edge's cuts, `edge_cut`) in [`ANNOTATION_TRUNCATED`]:
/// 1. `providerData`'s labels to the 63 characters `signalLabels` keeps (it repeats them);
/// 2. `originalPayload` to what fits, keeping at least its first 16 KiB;
/// 3. the longest `signalAnnotations` values, to one common length that fits;
/// 4. whole annotations, then labels, longest first (only huge keys get here).
fn fit(rr: &mut RemediationRequest, edge_cut: Option<&str>) {
    let mut cut: Vec<&str> = Vec::new();
    let mut size = json_len(rr);
    if size > FIT_BYTES {
        let labels = &rr.spec.signal_labels;
        let provider =
            rr.spec.provider_data.as_ref().and_then(|p| serde_json::from_slice::<serde_json::Value>(&p.0).ok());
        if let Some(mut provider) = provider {
            provider["labels"] = serde_json::json!(labels);
            let shorter = provider.to_string().into_bytes();
            if rr.spec.provider_data.as_ref().is_some_and(|p| shorter.len() < p.0.len()) {
                rr.spec.provider_data = Some(ByteString(shorter));
                cut.push("providerData");
                size = json_len(rr);
            }
        }
    }
    if size > FIT_BYTES
        && let Some(payload) = rr.spec.original_payload.as_mut()
        && payload.0.len() > PAYLOAD_KEPT_BYTES
    {
        // base64 takes 4 bytes per 3.
        let excess = (size - FIT_BYTES).div_ceil(4) * 3 + 3;
        let keep = payload.0.len().saturating_sub(excess).max(PAYLOAD_KEPT_BYTES);
        payload.0.truncate(keep);
        cut.push("originalPayload");
        size = json_len(rr);
    }
    if size > FIT_BYTES && !rr.spec.signal_annotations.is_empty() {
        cut.push("signalAnnotations");
        let longest = rr.spec.signal_annotations.values().map(String::len).max().unwrap_or(0);
        // The largest common value length that fits: binary search over 0..=longest.
        let full = rr.spec.signal_annotations.clone();
        let (mut lo, mut hi) = (0usize, longest);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            cap_annotations(rr, &full, mid);
            if json_len(rr) <= FIT_BYTES { lo = mid } else { hi = mid - 1 }
        }
        cap_annotations(rr, &full, lo);
        size = json_len(rr);
    }
    while size > FIT_BYTES {
        let spec = &mut rr.spec;
        let longest =
            |m: &BTreeMap<String, String>| m.iter().max_by_key(|(k, v)| k.len() + v.len()).map(|(k, _)| k.clone());
        if let Some(key) = longest(&spec.signal_annotations) {
            spec.signal_annotations.remove(&key);
            cut.push("signalAnnotations");
        } else if let Some(key) = longest(&spec.signal_labels) {
            spec.signal_labels.remove(&key);
            cut.push("signalLabels");
        } else {
            break;
        }
        size = json_len(rr);
    }
    cut.dedup();
    let mut list: Vec<&str> = edge_cut.into_iter().filter(|c| !c.is_empty()).collect();
    list.extend(cut);
    if !list.is_empty() {
        rr.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(ANNOTATION_TRUNCATED.to_owned(), list.join(","));
    }
}

/// `full`'s annotations with each value cut to `max` bytes, into `rr`.
fn cap_annotations(rr: &mut RemediationRequest, full: &BTreeMap<String, String>, max: usize) {
    rr.spec.signal_annotations = full.iter().map(|(k, v)| (k.clone(), truncate_bytes(v, max).to_owned())).collect();
}

/// Moves `rr` to `fallback_namespace`, labelled with the namespace it was meant for, as the
/// reference gateway does when the target namespace is missing (spec §7.2).
pub fn relocate(rr: &mut RemediationRequest, fallback_namespace: &str) {
    let origin = rr.metadata.namespace.take().unwrap_or_default();
    mark_origin(rr, &origin);
    rr.metadata.namespace = Some(fallback_namespace.to_owned());
}

/// Labels `rr` as not in the namespace its signal named: `origin` (empty for a
/// cluster-scoped signal).
fn mark_origin(rr: &mut RemediationRequest, origin: &str) {
    let labels = rr.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(LABEL_ORIGIN_NAMESPACE.to_owned(), label_value(origin));
    labels.insert(LABEL_CLUSTER_SCOPED.to_owned(), "true".to_owned());
}

/// The signal's `environment` label, any non-empty value as-is (cut to 63 characters), else
/// `unknown` (spec §6.1 without the namespace lookup: the edge copies it into the labels).
pub fn environment(labels: Layered<'_>) -> String {
    match labels.get("environment").map(|e| truncate_chars(e, 63)) {
        Some(env) if !env.is_empty() => env.to_owned(),
        _ => "unknown".to_owned(),
    }
}

/// The reference gateway's shipped priority policy (spec §6.2). Environments are compared
/// literally, so `prod` falls through to the default `P2`.
pub fn priority(severity: Severity, environment: &str) -> Priority {
    match (severity, environment) {
        (Severity::Critical, "production") => Priority::P0,
        (Severity::Critical, "staging") | (Severity::Warning, "production") => Priority::P1,
        (Severity::Info, _) => Priority::P3,
        _ => Priority::P2,
    }
}

/// `raw` as a valid label value: at most 63 characters of `[A-Za-z0-9._-]` with an
/// alphanumeric at both ends; other characters become `-`. May be empty.
pub fn label_value(raw: &str) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .take(LABEL_VALUE_MAX)
        .collect();
    mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
}

pub use breakwater_signal::is_dns1123_label;

/// Resource id of the signal's resource, as the storm service lists it.
pub fn signal_resource_id(signal: &pb::Signal) -> String {
    let resource = signal.resource.clone().unwrap_or_default();
    let namespace = if resource.namespace.is_empty() { &signal.namespace } else { &resource.namespace };
    breakwater_signal::resource_id(namespace, &resource.kind, &resource.name)
}

/// Milliseconds as a Kubernetes time; out-of-range values clamp to the epoch.
pub fn time(ms: UnixMillis) -> Time {
    Time(Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH))
}

pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn nonzero(ms: UnixMillis) -> Option<UnixMillis> {
    (ms > 0).then_some(ms)
}

fn provider_data(signal: &pb::Signal, labels: Layered<'_>) -> Vec<u8> {
    let resource = signal.resource.clone().unwrap_or_default();
    serde_json::json!({
        "namespace": signal.namespace,
        "resource": { "kind": resource.kind, "name": resource.name, "namespace": resource.namespace },
        "labels": labels.iter().collect::<BTreeMap<_, _>>(),
    })
    .to_string()
    .into_bytes()
}

fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests;
