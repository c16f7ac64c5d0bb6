//! Kubernetes Warning/Error events (reference spec §2.2): one event, one signal.

use std::collections::HashMap;

use serde::Deserialize;

use super::{Caps, Incoming, cap_values, mark_truncated, unix_ms};
use crate::error::EdgeError;
use breakwater_proto::v1 as pb;
use breakwater_signal::{FingerprintRule, UnixMillis, delivery_key};

pub const SOURCE_TYPE: &str = "kubernetes-event";

/// Reasons that are critical whatever the event type.
const CRITICAL_REASONS: [&str; 6] =
    ["OOMKilled", "NodeNotReady", "FailedScheduling", "Evicted", "FailedMount", "NetworkNotReady"];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    #[serde(default)]
    metadata: Option<EventMeta>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    involved_object: Option<ObjectRef>,
    #[serde(default)]
    first_timestamp: Option<String>,
    #[serde(default)]
    last_timestamp: Option<String>,
    #[serde(default)]
    count: Option<i64>,
    #[serde(default)]
    source: Option<EventSource>,
}

#[derive(Deserialize, Default)]
struct EventMeta {
    #[serde(default)]
    uid: Option<String>,
}

#[derive(Deserialize, Default)]
struct ObjectRef {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize, Default)]
struct EventSource {
    #[serde(default)]
    component: Option<String>,
    #[serde(default)]
    host: Option<String>,
}

/// # Errors
/// [`EdgeError::BadRequest`] for malformed JSON, a missing reason, kind or
/// name, and for `Normal` or unknown event types (in that order, as the
/// reference gateway checks them).
///
/// A delivery is identified by the Event's `metadata.uid` and `count`: the same Event
/// object posted twice counts once, while the next count of a recurring event counts again.
pub fn parse(body: &[u8], received: UnixMillis, rule: &FingerprintRule) -> Result<Vec<Incoming>, EdgeError> {
    parse_capped(body, received, rule, &Caps::default())
}

/// Bytes the signal of `body` takes at most: one event is one signal, holding its fields
/// and the body itself.
pub fn expanded_bytes(body: &[u8]) -> usize {
    2 * body.len() + super::SIGNAL_OVERHEAD_BYTES
}

/// [`parse`] with label and annotation values cut to `caps`.
///
/// # Errors
/// As [`parse`].
pub fn parse_capped(
    body: &[u8],
    received: UnixMillis,
    rule: &FingerprintRule,
    caps: &Caps,
) -> Result<Vec<Incoming>, EdgeError> {
    let event: Event = serde_json::from_slice(body).map_err(|e| EdgeError::BadRequest(format!("invalid JSON: {e}")))?;
    let reason = event.reason.filter(|r| !r.is_empty()).ok_or_else(|| bad("missing reason field"))?;
    let object = event.involved_object.unwrap_or_default();
    let kind = object.kind.filter(|k| !k.is_empty()).ok_or_else(|| bad("missing involvedObject.kind field"))?;
    let name = object.name.filter(|n| !n.is_empty()).ok_or_else(|| bad("missing involvedObject.name field"))?;
    let event_type = event.kind.unwrap_or_default();
    match event_type.as_str() {
        "Warning" | "Error" => {}
        "Normal" => return Err(bad("normal events not processed (informational only)")),
        other => return Err(bad(&format!("unsupported event type: {other} (expected Warning or Error)"))),
    }
    let namespace = object.namespace.unwrap_or_default();
    let severity = if CRITICAL_REASONS.contains(&reason.as_str()) || event_type == "Error" {
        pb::Severity::Critical
    } else {
        pb::Severity::Warning
    };
    let source = event.source.unwrap_or_default();
    let mut labels = HashMap::from([
        ("kubernaut.io/event-type".to_owned(), event_type.to_lowercase()),
        ("kubernaut.io/resource-kind".to_owned(), kind.to_lowercase()),
    ]);
    if let Some(component) = source.component.filter(|c| !c.is_empty()) {
        labels.insert("kubernaut.io/event-source".into(), component);
    }
    let mut annotations = HashMap::new();
    let mut annotate = |key: &str, value: Option<String>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            annotations.insert(format!("kubernaut.io/{key}"), v);
        }
    };
    annotate("event-message", event.message);
    annotate("event-count", event.count.filter(|c| *c > 0).map(|c| c.to_string()));
    annotate("source-host", source.host);
    annotate("first-timestamp", event.first_timestamp.clone());
    annotate("last-timestamp", event.last_timestamp);
    let mut cut = Vec::new();
    cap_values(&mut labels, caps.label_value_bytes, "labels", &mut cut);
    cap_values(&mut annotations, caps.annotation_value_bytes, "annotations", &mut cut);
    mark_truncated(&mut annotations, cut);
    let fingerprint = rule.apply(&reason, &namespace, &kind, &name, breakwater_signal::Layered::own(&labels));
    let delivery = event
        .metadata
        .and_then(|m| m.uid)
        .filter(|uid| !uid.is_empty())
        .map(|uid| delivery_key(&["kubernetes-event", &uid, &event.count.unwrap_or_default().to_string()]));
    let signal = pb::Signal {
        fingerprint,
        severity: severity.into(),
        resource: Some(pb::Resource { kind, name, namespace: namespace.clone() }),
        namespace,
        alert_name: reason,
        labels,
        annotations,
        firing_time_unix_ms: unix_ms(event.first_timestamp.as_deref()).unwrap_or(received),
        received_time_unix_ms: received,
        source_type: SOURCE_TYPE.into(),
        source: "kubernetes-events".into(),
        status: pb::SignalStatus::Firing.into(),
        original_payload: body.to_vec(),
        ..pb::Signal::default()
    };
    Ok(vec![Incoming { signal, delivery }])
}

fn bad(detail: &str) -> EdgeError {
    EdgeError::BadRequest(detail.to_owned())
}

#[cfg(test)]
mod tests;
