//! Alertmanager webhook v4: every alert of the batch becomes a signal;
//! `resolved` alerts become resolutions.
//!
//! A delivery is identified by the notification's `receiver` and `groupKey` with the
//! alert's `fingerprint`, `status` and `startsAt`: every Alertmanager peer, and every retry,
//! sends the same for one notification of one alert. A payload without `groupKey` (not
//! from Alertmanager) has no delivery identity, and each of its deliveries counts.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Caps, Incoming, InvalidAlert, SIGNAL_OVERHEAD_BYTES, Signals, StringMap, cap_values, map_bytes, mark_truncated,
    severity, unix_ms,
};
use crate::error::EdgeError;
use breakwater_proto::v1 as pb;
use breakwater_signal::{FingerprintRule, Layered, UnixMillis, delivery_key};

pub const SOURCE_TYPE: &str = "prometheus-alert";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Webhook<'a> {
    #[serde(borrow)]
    alerts: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    common_labels: Option<StringMap>,
    #[serde(default)]
    common_annotations: Option<StringMap>,
    #[serde(default)]
    receiver: Option<String>,
    #[serde(default)]
    group_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Alert {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    labels: Option<StringMap>,
    #[serde(default)]
    annotations: Option<StringMap>,
    #[serde(default)]
    starts_at: Option<String>,
    /// Alertmanager's fingerprint of the alert's label set.
    #[serde(default)]
    fingerprint: Option<String>,
}

/// The label that names the resource, in precedence order (reference §2.1).
const RESOURCE_LABELS: [(&str, &str); 6] = [
    ("pod", "Pod"),
    ("deployment", "Deployment"),
    ("statefulset", "StatefulSet"),
    ("daemonset", "DaemonSet"),
    ("node", "Node"),
    ("service", "Service"),
];

/// The labels that name an alert's namespace, first present wins, unless configured
/// (`edge.namespace_labels`): the reference gateway's order.
pub const DEFAULT_NAMESPACE_LABELS: [&str; 2] = ["namespace", "exported_namespace"];

/// One signal per alert, or why that alert cannot be one, with the default [`Caps`] and
/// namespace labels.
///
/// # Errors
/// [`EdgeError::BadRequest`] for a payload that is not a webhook at all;
/// [`EdgeError::ExpansionTooLarge`] past the default [`Caps`].
pub fn parse(body: &[u8], received: UnixMillis, rule: &FingerprintRule) -> Result<Signals, EdgeError> {
    let namespace_labels = DEFAULT_NAMESPACE_LABELS.map(str::to_owned);
    Ok(read(body, &Caps::default())?.signals(received, rule, &namespace_labels))
}

/// A webhook read and checked, before its alerts are expanded into signals: what
/// [`Parsed::expanded_bytes`] says they will take can be reserved first.
pub struct Parsed<'a> {
    /// Each alert as read, or why it is not a valid alert.
    alerts: Vec<(&'a RawValue, Result<Alert, String>)>,
    common_labels: StringMap,
    common_annotations: StringMap,
    /// Common values cut to their caps (every signal's truncation marker lists them).
    common_cut: Vec<String>,
    receiver: String,
    group_key: Option<String>,
    caps: Caps,
    expanded: usize,
}

/// Reads the webhook and every alert, cuts common values to `caps`, and refuses a webhook
/// whose signals would exceed `caps.expanded_bytes` before any of them is built. The common
/// labels and annotations are held once, for every signal (see [`Signals::shared`]). An
/// alert that is not valid is kept as its reason, so the rest of the batch still counts.
///
/// # Errors
/// [`EdgeError::BadRequest`] for a payload that is not a webhook (malformed JSON, no
/// alerts); [`EdgeError::ExpansionTooLarge`].
pub fn read<'a>(body: &'a [u8], caps: &Caps) -> Result<Parsed<'a>, EdgeError> {
    let webhook: Webhook<'a> =
        serde_json::from_slice(body).map_err(|e| EdgeError::BadRequest(format!("malformed JSON payload: {e}")))?;
    let raw_alerts = webhook.alerts.ok_or_else(|| EdgeError::BadRequest("missing alerts array".into()))?;
    if raw_alerts.is_empty() {
        return Err(EdgeError::BadRequest("no alerts in webhook payload".into()));
    }
    let mut common_cut = Vec::new();
    let mut common_labels = webhook.common_labels.unwrap_or_default();
    cap_values(&mut common_labels, caps.label_value_bytes, "labels", &mut common_cut);
    let mut common_annotations = webhook.common_annotations.unwrap_or_default();
    cap_values(&mut common_annotations, caps.annotation_value_bytes, "annotations", &mut common_cut);
    let mut expanded = map_bytes(&common_labels) + map_bytes(&common_annotations);
    let mut alerts = Vec::with_capacity(raw_alerts.len());
    for (i, raw) in raw_alerts.into_iter().enumerate() {
        // serde quotes the offending value, which may be a secret: it never goes back out.
        let alert: Result<Alert, String> = serde_json::from_str(raw.get())
            .map_err(|e| breakwater_telemetry::redact(&format!("alerts[{i}] is not a valid alert: {e}")).into_owned());
        let own = alert
            .as_ref()
            .map_or(0, |a| a.labels.as_ref().map_or(0, map_bytes) + a.annotations.as_ref().map_or(0, map_bytes));
        expanded = expanded.saturating_add(own.min(caps.expanded_bytes) + raw.get().len() + SIGNAL_OVERHEAD_BYTES);
        if expanded > caps.expanded_bytes {
            return Err(EdgeError::ExpansionTooLarge { limit: caps.expanded_bytes });
        }
        alerts.push((raw, alert));
    }
    Ok(Parsed {
        alerts,
        common_labels,
        common_annotations,
        common_cut,
        receiver: webhook.receiver.unwrap_or_default(),
        group_key: webhook.group_key.filter(|k| !k.is_empty()),
        caps: *caps,
        expanded,
    })
}

impl Parsed<'_> {
    /// Bytes the signals will take, at most (see [`read`]).
    pub fn expanded_bytes(&self) -> usize {
        self.expanded
    }

    /// One signal per alert, in order, or why that alert cannot be one. An alert's
    /// namespace is the value of the first of `namespace_labels` it has, else empty (the
    /// edge then places its CR in its fallback namespace). Each signal holds its own labels
    /// and annotations; the common ones are the batch's [`Signals::shared`].
    pub fn signals(self, received: UnixMillis, rule: &FingerprintRule, namespace_labels: &[String]) -> Signals {
        let Self { alerts, common_labels, common_annotations, common_cut, receiver, group_key, caps, .. } = self;
        let common = Common { labels: &common_labels, cut: &common_cut, caps, namespace_labels };
        let incoming = alerts
            .into_iter()
            .enumerate()
            .map(|(i, (raw, alert))| {
                let alert = alert.map_err(|reason| InvalidAlert { alert_name: alert_name_of(raw), reason })?;
                let starts_at = alert.starts_at.clone().unwrap_or_default();
                let am_fingerprint = alert.fingerprint.clone();
                let signal = signal(i, alert, raw.get().as_bytes(), &common, received, rule)?;
                let delivery = group_key.as_deref().map(|group_key| {
                    let alert_id = am_fingerprint.as_deref().unwrap_or(&signal.fingerprint);
                    let status = if signal.status() == pb::SignalStatus::Resolved { "resolved" } else { "firing" };
                    delivery_key(&["alertmanager", &receiver, group_key, alert_id, status, &starts_at])
                });
                Ok(Incoming { signal, delivery })
            })
            .collect();
        Signals { shared: pb::SharedValues { labels: common_labels, annotations: common_annotations }, incoming }
    }
}

/// The `alertname` label of an alert that is not valid, when it can be found, so its
/// result names it.
fn alert_name_of(raw: &RawValue) -> String {
    #[derive(Deserialize)]
    struct WithLabels {
        labels: AlertName,
    }
    #[derive(Deserialize)]
    struct AlertName {
        alertname: String,
    }
    serde_json::from_str::<WithLabels>(raw.get()).map(|a| a.labels.alertname).unwrap_or_default()
}

/// What every alert of a webhook shares.
struct Common<'c> {
    labels: &'c StringMap,
    cut: &'c [String],
    caps: Caps,
    namespace_labels: &'c [String],
}

fn signal(
    i: usize,
    alert: Alert,
    raw: &[u8],
    common: &Common<'_>,
    received: UnixMillis,
    rule: &FingerprintRule,
) -> Result<pb::Signal, InvalidAlert> {
    // The alert's own labels are more specific than the group's common ones, which are
    // not copied: the signal keeps its own, over the batch's shared ones.
    let mut cut = common.cut.to_vec();
    let mut labels = alert.labels.unwrap_or_default();
    cap_values(&mut labels, common.caps.label_value_bytes, "labels", &mut cut);
    let mut annotations = alert.annotations.unwrap_or_default();
    cap_values(&mut annotations, common.caps.annotation_value_bytes, "annotations", &mut cut);
    mark_truncated(&mut annotations, cut);
    let status = match alert.status.as_deref() {
        Some("firing") | None => pb::SignalStatus::Firing,
        Some("resolved") => pb::SignalStatus::Resolved,
        Some(other) => {
            let shown: String = other.chars().take(32).collect();
            let reason = format!("alerts[{i}]: status {shown:?} is not allowed: use \"firing\" or \"resolved\"");
            let alert_name = Layered::new(&labels, common.labels).get("alertname").unwrap_or_default().to_owned();
            return Err(InvalidAlert { alert_name, reason });
        }
    };
    let alert = AlertParts {
        index: i,
        labels,
        shared_labels: common.labels,
        annotations,
        status,
        starts_at: unix_ms(alert.starts_at.as_deref()),
        resource: None,
        namespace_labels: common.namespace_labels,
    };
    let mut signal = alert_signal(alert, received, rule)?;
    signal.original_payload = raw.to_vec();
    Ok(signal)
}

/// An alert in the Alertmanager shape, as an adapter read it: what [`alert_signal`] makes a
/// signal of. The webhook and the gRPC ingest share it, so one alert makes one signal (one
/// fingerprint, one CR) whichever way it came.
pub(super) struct AlertParts<'a> {
    /// Its position in the batch, for reasons.
    pub index: usize,
    /// Its own labels, over `shared_labels` (see [`Layered`]).
    pub labels: StringMap,
    pub shared_labels: &'a StringMap,
    /// Already cut to their caps and marked.
    pub annotations: StringMap,
    pub status: pb::SignalStatus,
    pub starts_at: Option<UnixMillis>,
    /// The resource the sender named; else it is read from the labels.
    pub resource: Option<pb::Resource>,
    pub namespace_labels: &'a [String],
}

/// The signal of `alert`, received at `received`, with an empty original payload.
///
/// # Errors
/// [`InvalidAlert`] without an `alertname` label.
pub(super) fn alert_signal(
    alert: AlertParts<'_>,
    received: UnixMillis,
    rule: &FingerprintRule,
) -> Result<pb::Signal, InvalidAlert> {
    let AlertParts { index, labels, shared_labels, annotations, status, starts_at, resource, namespace_labels } = alert;
    let all_labels = Layered::new(&labels, shared_labels);
    let alert_name = all_labels.get("alertname").unwrap_or_default().to_owned();
    if alert_name.is_empty() {
        let reason = format!("alerts[{index}]: labels.alertname is required");
        return Err(InvalidAlert { alert_name, reason });
    }
    let labelled_namespace =
        || namespace_labels.iter().find_map(|key| all_labels.get(key).filter(|ns| !ns.is_empty())).map(str::to_owned);
    let (namespace, kind, name) = match resource {
        Some(r) => {
            let namespace = if r.namespace.is_empty() { labelled_namespace().unwrap_or_default() } else { r.namespace };
            (namespace, r.kind, r.name)
        }
        None => {
            let (kind, name) = RESOURCE_LABELS
                .iter()
                .find_map(|(label, kind)| all_labels.get(label).map(|name| ((*kind).to_owned(), name.to_owned())))
                .unwrap_or_else(|| ("Unknown".to_owned(), "unknown".to_owned()));
            (labelled_namespace().unwrap_or_default(), kind, name)
        }
    };
    let fingerprint = rule.apply(&alert_name, &namespace, &kind, &name, all_labels);
    let severity = severity(all_labels.get("severity").unwrap_or_default());
    Ok(pb::Signal {
        fingerprint,
        severity: severity.into(),
        resource: Some(pb::Resource { kind, name, namespace: namespace.clone() }),
        namespace,
        alert_name,
        labels,
        annotations,
        firing_time_unix_ms: starts_at.unwrap_or(received),
        received_time_unix_ms: received,
        source_type: SOURCE_TYPE.into(),
        source: "prometheus".into(),
        status: status.into(),
        original_payload: Vec::new(),
        ..pb::Signal::default()
    })
}

#[cfg(test)]
mod tests;
