//! Payload adapters: a webhook body in, normalized signals out.
//!
//! An adapter validates the whole payload before anything happens, so a bad
//! webhook is rejected whole and leaves nothing behind.

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

/// Labels and annotations must be plain strings; JSON `null` values are dropped.
type StringMap = HashMap<String, String>;
