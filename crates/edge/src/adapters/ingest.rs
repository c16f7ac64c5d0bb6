//! `breakwater.v1.IngestService/SubmitSignals`: signals an internal caller submits in the
//! Alertmanager alert shape. Each becomes the signal the same alert posted to the Prometheus
//! route would (same fingerprint, same CR), unless the caller names its fingerprint or
//! resource.
//!
//! A delivery is identified by the caller's `delivery_id` with the signal's fingerprint and status, so a
//! retry of a call counts each signal once.

use breakwater_proto::v1 as pb;
use breakwater_signal::{FingerprintRule, UnixMillis, delivery_key, is_dns1123_label};

use super::prometheus::{AlertParts, alert_signal};
use super::{Caps, Incoming, InvalidAlert, SIGNAL_OVERHEAD_BYTES, StringMap, cap_values, map_bytes, mark_truncated};

pub const SOURCE_TYPE: &str = "grpc-signal";

/// `source` when the caller gives none.
const DEFAULT_SOURCE: &str = "grpc";
/// Longest `source` (the CR's `signalSource` allows 63).
const SOURCE_MAX_CHARS: usize = 63;
/// Longest `delivery_id`.
const DELIVERY_ID_MAX_BYTES: usize = 128;
/// Longest resource kind and name (a Kubernetes kind, an object name).
const KIND_MAX_BYTES: usize = 63;
const NAME_MAX_BYTES: usize = 253;

/// Bytes the signals of `request` take at most, to reserve before they are built: each
/// holds its maps, its original payload (about the same again) and fixed fields.
pub fn expanded_bytes(request: &pb::SubmitSignalsRequest) -> usize {
    request
        .signals
        .iter()
        .map(|s| 2 * (map_bytes(&s.labels) + map_bytes(&s.annotations)) + SIGNAL_OVERHEAD_BYTES)
        .fold(0usize, usize::saturating_add)
}

/// One signal per submitted one, in order, or why it cannot be one.
pub fn signals(
    request: pb::SubmitSignalsRequest,
    received: UnixMillis,
    rule: &FingerprintRule,
    caps: &Caps,
    namespace_labels: &[String],
) -> Vec<Result<Incoming, InvalidAlert>> {
    request
        .signals
        .into_iter()
        .enumerate()
        .map(|(index, submitted)| signal(index, submitted, received, rule, caps, namespace_labels))
        .collect()
}

fn signal(
    index: usize,
    submitted: pb::SubmittedSignal,
    received: UnixMillis,
    rule: &FingerprintRule,
    caps: &Caps,
    namespace_labels: &[String],
) -> Result<Incoming, InvalidAlert> {
    let alert_name = submitted.labels.get("alertname").cloned().unwrap_or_default();
    let invalid = |reason: String| InvalidAlert { alert_name: alert_name.clone(), reason };
    let status = match pb::SignalStatus::try_from(submitted.status) {
        Ok(pb::SignalStatus::Unspecified | pb::SignalStatus::Firing) => pb::SignalStatus::Firing,
        Ok(pb::SignalStatus::Resolved) => pb::SignalStatus::Resolved,
        Err(_) => return Err(invalid(format!("signals[{index}]: status {} is not a SignalStatus", submitted.status))),
    };
    if !submitted.fingerprint.is_empty() && !is_fingerprint(&submitted.fingerprint) {
        return Err(invalid(format!("signals[{index}]: fingerprint must be 64 lower-case hex characters")));
    }
    if submitted.source.chars().count() > SOURCE_MAX_CHARS {
        return Err(invalid(format!("signals[{index}]: source is longer than {SOURCE_MAX_CHARS} characters")));
    }
    if submitted.delivery_id.len() > DELIVERY_ID_MAX_BYTES {
        return Err(invalid(format!("signals[{index}]: delivery_id is longer than {DELIVERY_ID_MAX_BYTES} bytes")));
    }
    if let Some(resource) = &submitted.resource {
        if resource.kind.is_empty() || resource.kind.len() > KIND_MAX_BYTES {
            return Err(invalid(format!("signals[{index}]: resource.kind must be 1 to {KIND_MAX_BYTES} bytes")));
        }
        if resource.name.is_empty() || resource.name.len() > NAME_MAX_BYTES {
            return Err(invalid(format!("signals[{index}]: resource.name must be 1 to {NAME_MAX_BYTES} bytes")));
        }
        if !resource.namespace.is_empty() && !is_dns1123_label(&resource.namespace) {
            return Err(invalid(format!("signals[{index}]: resource.namespace is not a namespace name")));
        }
    }
    // The alert as Alertmanager would have sent it: what the CR's originalPayload holds.
    let original = serde_json::json!({
        "status": if status == pb::SignalStatus::Resolved { "resolved" } else { "firing" },
        "labels": &submitted.labels,
        "annotations": &submitted.annotations,
        "startsAt": rfc3339(submitted.starts_at_unix_ms),
        "endsAt": rfc3339(submitted.ends_at_unix_ms),
    });
    let mut cut = Vec::new();
    let mut labels = submitted.labels;
    cap_values(&mut labels, caps.label_value_bytes, "labels", &mut cut);
    let mut annotations = submitted.annotations;
    cap_values(&mut annotations, caps.annotation_value_bytes, "annotations", &mut cut);
    mark_truncated(&mut annotations, cut);
    let alert = AlertParts {
        index,
        labels,
        shared_labels: &StringMap::new(),
        annotations,
        status,
        starts_at: (submitted.starts_at_unix_ms > 0).then_some(submitted.starts_at_unix_ms),
        resource: submitted.resource,
        namespace_labels,
    };
    let mut signal = alert_signal(alert, received, rule)
        .map_err(|e| InvalidAlert { reason: e.reason.replacen("alerts[", "signals[", 1), ..e })?;
    if !submitted.fingerprint.is_empty() {
        signal.fingerprint = submitted.fingerprint;
    }
    signal.source_type = SOURCE_TYPE.into();
    signal.source = if submitted.source.is_empty() { DEFAULT_SOURCE.into() } else { submitted.source };
    signal.original_payload = serde_json::to_vec(&original).unwrap_or_default();
    let delivery = (!submitted.delivery_id.is_empty()).then(|| {
        let status = if status == pb::SignalStatus::Resolved { "resolved" } else { "firing" };
        delivery_key(&["ingest", &submitted.delivery_id, &signal.fingerprint, status])
    });
    Ok(Incoming { signal, delivery })
}

fn is_fingerprint(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// RFC 3339 of Unix ms; `None` for 0 or a time out of range.
fn rfc3339(ms: i64) -> Option<String> {
    (ms > 0).then(|| jiff::Timestamp::from_millisecond(ms).ok().map(|t| t.to_string())).flatten()
}

#[cfg(test)]
mod tests;
