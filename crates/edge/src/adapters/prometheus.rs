//! Alertmanager webhook v4: every alert of the batch becomes a signal;
//! `resolved` alerts become resolutions.
//!
//! A delivery is identified by the notification's `receiver` and `groupKey` with the
//! alert's `fingerprint`, `status` and `startsAt`: every Alertmanager peer, and every retry,
//! sends the same for one notification of one alert. A payload without `groupKey` (not
//! from Alertmanager) has no delivery identity, and each of its deliveries counts.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Incoming, StringMap, severity, unix_ms};
use crate::error::EdgeError;
use breakwater_proto::v1 as pb;
use breakwater_signal::{FingerprintRule, UnixMillis, delivery_key};

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

/// # Errors
/// [`EdgeError::BadRequest`] naming the first problem, e.g. `alerts[2]: labels.alertname is required`.
pub fn parse(body: &[u8], received: UnixMillis, rule: &FingerprintRule) -> Result<Vec<Incoming>, EdgeError> {
    let webhook: Webhook<'_> =
        serde_json::from_slice(body).map_err(|e| EdgeError::BadRequest(format!("malformed JSON payload: {e}")))?;
    let alerts = webhook.alerts.ok_or_else(|| EdgeError::BadRequest("missing alerts array".into()))?;
    if alerts.is_empty() {
        return Err(EdgeError::BadRequest("no alerts in webhook payload".into()));
    }
    let common_labels = webhook.common_labels.unwrap_or_default();
    let common_annotations = webhook.common_annotations.unwrap_or_default();
    let receiver = webhook.receiver.unwrap_or_default();
    let group_key = webhook.group_key.filter(|k| !k.is_empty());
    alerts
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let alert: Alert = serde_json::from_str(raw.get())
                .map_err(|e| EdgeError::BadRequest(format!("alerts[{i}] is not a valid alert: {e}")))?;
            let starts_at = alert.starts_at.clone().unwrap_or_default();
            let am_fingerprint = alert.fingerprint.clone();
            let signal = signal(i, alert, raw.get().as_bytes(), &common_labels, &common_annotations, received, rule)?;
            let delivery = group_key.as_deref().map(|group_key| {
                let alert_id = am_fingerprint.as_deref().unwrap_or(&signal.fingerprint);
                let status = if signal.status() == pb::SignalStatus::Resolved { "resolved" } else { "firing" };
                delivery_key(&["alertmanager", &receiver, group_key, alert_id, status, &starts_at])
            });
            Ok(Incoming { signal, delivery })
        })
        .collect()
}

fn signal(
    i: usize,
    alert: Alert,
    raw: &[u8],
    common_labels: &StringMap,
    common_annotations: &StringMap,
    received: UnixMillis,
    rule: &FingerprintRule,
) -> Result<pb::Signal, EdgeError> {
    // The alert's own labels are more specific than the group's common ones.
    let mut labels = common_labels.clone();
    labels.extend(alert.labels.unwrap_or_default());
    let mut annotations = common_annotations.clone();
    annotations.extend(alert.annotations.unwrap_or_default());
    let alert_name = labels.get("alertname").cloned().unwrap_or_default();
    if alert_name.is_empty() {
        return Err(EdgeError::BadRequest(format!("alerts[{i}]: labels.alertname is required")));
    }
    let status = match alert.status.as_deref() {
        Some("firing") | None => pb::SignalStatus::Firing,
        Some("resolved") => pb::SignalStatus::Resolved,
        Some(other) => {
            return Err(EdgeError::BadRequest(format!(
                "alerts[{i}]: status {other:?} is not allowed: use \"firing\" or \"resolved\""
            )));
        }
    };
    let namespace = labels
        .get("namespace")
        .or_else(|| labels.get("exported_namespace"))
        .filter(|ns| !ns.is_empty())
        .cloned()
        .unwrap_or_else(|| "default".to_owned());
    let (kind, name) = RESOURCE_LABELS
        .iter()
        .find_map(|(label, kind)| labels.get(*label).map(|name| ((*kind).to_owned(), name.clone())))
        .unwrap_or_else(|| ("Unknown".to_owned(), "unknown".to_owned()));
    let fingerprint = rule.apply(&alert_name, &namespace, &kind, &name, &labels);
    Ok(pb::Signal {
        fingerprint,
        severity: severity(labels.get("severity").map_or("", String::as_str)).into(),
        resource: Some(pb::Resource { kind, name, namespace: namespace.clone() }),
        namespace,
        alert_name,
        labels,
        annotations,
        firing_time_unix_ms: unix_ms(alert.starts_at.as_deref()).unwrap_or(received),
        received_time_unix_ms: received,
        source_type: SOURCE_TYPE.into(),
        source: "prometheus".into(),
        status: status.into(),
        original_payload: raw.to_vec(),
    })
}

#[cfg(test)]
mod tests;
