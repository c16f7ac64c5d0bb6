//! Payload adapters: a webhook body in, normalized signals out.
//!
//! An adapter validates the whole payload before anything happens: a body that is not a
//! webhook is rejected whole and leaves nothing behind, and an alert that cannot be a
//! signal is set aside with its reason while the others go on.

pub mod ingest;
pub mod kubernetes_event;
pub mod prometheus;

use std::collections::HashMap;

use breakwater_proto::v1 as pb;
use breakwater_signal::UnixMillis;

/// Parses an RFC 3339 time to Unix ms; `None` when absent or malformed (the
/// caller then falls back to the received time).
fn unix_ms(time: Option<&str>) -> Option<UnixMillis> {
    let t: jiff::Timestamp = time?.parse().ok()?;
    let ms = t.as_millisecond();
    // Alertmanager uses 0001-01-01 for "unset".
    (ms > 0).then_some(ms)
}

fn severity(s: &str) -> pb::Severity {
    match s {
        "critical" => pb::Severity::Critical,
        "info" => pb::Severity::Info,
        _ => pb::Severity::Warning,
    }
}

/// One signal as its adapter read it, with the identity of its delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub signal: pb::Signal,
    /// Same for every copy of this delivery (a sender's retry, another Alertmanager peer's
    /// notification), so dedup counts it once; `None` when the payload carries no such
    /// identity. See [`breakwater_signal::delivery_key`].
    pub delivery: Option<String>,
}

/// What an adapter read from one payload: one entry per alert, in order, and the labels
/// and annotations they all share.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    /// A webhook's `commonLabels` and `commonAnnotations`, held once: each signal has them
    /// unless its own map sets the key (see [`breakwater_signal::Layered`]), so 1,000 alerts
    /// sharing a large annotation do not make 1,000 copies of it.
    pub shared: pb::SharedValues,
    pub incoming: Vec<Result<Incoming, InvalidAlert>>,
}

impl Signals {
    /// Signals that share nothing.
    pub fn unshared(incoming: Vec<Result<Incoming, InvalidAlert>>) -> Self {
        Self { shared: pb::SharedValues::default(), incoming }
    }
}

/// An alert of a webhook that cannot become a signal, answered in its own result while the
/// rest of the batch counts: a 4xx for the whole webhook would lose the valid alerts
/// (Alertmanager drops 4xx), a 5xx would repeat the problem for ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidAlert {
    /// Its `alertname`, when it has one.
    pub alert_name: String,
    pub reason: String,
}

/// Labels and annotations must be plain strings; JSON `null` values are dropped.
type StringMap = HashMap<String, String>;

/// Signal annotation (and CR annotation) listing the values cut to a cap, as
/// `labels.<key>` and `annotations.<key>`, comma-separated.
pub const TRUNCATED_ANNOTATION: &str = "kubernaut.io/truncated";

/// What the marker lists at most, so a payload of many long keys cannot make it large.
const TRUNCATED_LIST_MAX_BYTES: usize = 1024;

/// Per-signal bytes beyond its maps and payload (fingerprint, names, times), charged in
/// [`Caps::expanded_bytes`] so a webhook of many empty alerts is not counted as free.
const SIGNAL_OVERHEAD_BYTES: usize = 256;

/// Size caps applied while a payload becomes signals (`edge.max_*` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// A label value longer than this is cut to it (at a character boundary).
    pub label_value_bytes: usize,
    /// An annotation value longer than this is cut to it.
    pub annotation_value_bytes: usize,
    /// A webhook whose signals would take more than this, once every alert has its
    /// copy of the common labels and annotations, is refused with 413.
    pub expanded_bytes: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self { label_value_bytes: 4096, annotation_value_bytes: 32 * 1024, expanded_bytes: 8 * 1024 * 1024 }
    }
}

/// Cuts every value of `map` over `max` bytes, naming each cut one in `cut` as `kind.key`.
fn cap_values(map: &mut StringMap, max: usize, kind: &str, cut: &mut Vec<String>) {
    for (key, value) in map.iter_mut() {
        if value.len() > max {
            let mut end = max;
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            value.truncate(end);
            cut.push(format!("{kind}.{key}"));
        }
    }
}

/// Bytes of a map's keys and values.
fn map_bytes(map: &StringMap) -> usize {
    map.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// Records the cuts of one signal in its [`TRUNCATED_ANNOTATION`], bounded in size.
fn mark_truncated(annotations: &mut StringMap, mut cut: Vec<String>) {
    if cut.is_empty() {
        return;
    }
    cut.sort();
    cut.dedup();
    let mut list = String::new();
    for item in cut {
        if list.len() + item.len() + 1 > TRUNCATED_LIST_MAX_BYTES {
            list.push_str(",…");
            break;
        }
        if !list.is_empty() {
            list.push(',');
        }
        list.push_str(&item);
    }
    annotations.insert(TRUNCATED_ANNOTATION.to_owned(), list);
}
