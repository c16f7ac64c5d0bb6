//! What one write may carry, checked before anything of a `WriteRemediations` call is
//! applied: a caller that can reach crd-writer must not be able to set a count or a time no
//! edge could have sent, nor make a CR larger than the edge would. Pure: the time is passed in.
//!
//! Counts are bounded by time: dedup counts one per alert, and no gateway ingests more than
//! [`MAX_ALERTS_PER_MS`] alerts of one incident per millisecond (the design ceiling is about
//! 80 per ms for all incidents together), plus [`MAX_COUNT_BURST`] at once. So a window that
//! has been open for `d` ms holds at most `MAX_COUNT_BURST + d * MAX_ALERTS_PER_MS` alerts,
//! and the times that bound it may lie at most [`MAX_WINDOW_AGE_MS`] in the past and
//! [`MAX_CLOCK_SKEW_MS`] in the future.

use std::collections::HashMap;

use breakwater_proto::v1 as pb;
use breakwater_signal::UnixMillis;

/// Longest label value, resource field or alert name: the edge's largest
/// `edge.max_label_value_bytes`.
pub const MAX_LABEL_VALUE_BYTES: usize = 1024 * 1024;
/// Longest annotation value: the edge's largest `edge.max_annotation_value_bytes`.
pub const MAX_ANNOTATION_VALUE_BYTES: usize = 262_000;
/// Longest label or annotation key, and source or source type.
pub const MAX_KEY_BYTES: usize = 1024;
/// Most labels, and most annotations, of one signal.
pub const MAX_ENTRIES: usize = 4096;
/// Largest `original_payload`: the edge's largest decoded body.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;
/// Alerts of one incident one window may count at once, before time is taken into account.
pub const MAX_COUNT_BURST: u64 = 1_000_000;
/// Alerts of one incident per millisecond a window may count on top of the burst.
pub const MAX_ALERTS_PER_MS: u64 = 1_000;
/// How far in the past a window's first or last time may be: a year.
pub const MAX_WINDOW_AGE_MS: i64 = 366 * 24 * 3600 * 1000;
/// How far ahead of crd-writer's clock a time may be (the edge's and dedup's clocks differ).
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// One bound a write breaks: the field (`writes[3].occurrence_count`) and what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub expected: String,
}

/// Checks write `index` against every bound, at `now`.
///
/// # Errors
/// The first bound it breaks.
pub fn check(index: usize, write: &pb::RemediationWrite, now: UnixMillis) -> Result<(), Violation> {
    let violation = |field: &str, expected: String| Violation { field: format!("writes[{index}].{field}"), expected };
    let time_ok =
        |t: i64| t == 0 || (now.saturating_sub(MAX_WINDOW_AGE_MS)..=now.saturating_add(MAX_CLOCK_SKEW_MS)).contains(&t);
    let times = [
        ("first_seen_unix_ms", write.first_seen_unix_ms),
        ("last_seen_unix_ms", write.last_seen_unix_ms),
        ("storm_window_start_unix_ms", write.storm_window_start_unix_ms),
    ];
    for (field, t) in times {
        if !time_ok(t) {
            return Err(violation(field, "0, or within a year before and 5 minutes after crd-writer's clock".into()));
        }
    }
    if write.first_seen_unix_ms > 0 && write.last_seen_unix_ms > 0 && write.last_seen_unix_ms < write.first_seen_unix_ms
    {
        return Err(violation("last_seen_unix_ms", "at least first_seen_unix_ms".into()));
    }
    let dedup_max = most_counted(write.first_seen_unix_ms, write.last_seen_unix_ms.max(write.first_seen_unix_ms));
    if write.occurrence_count > dedup_max {
        return Err(violation("occurrence_count", format!("at most {dedup_max} for a window of that length")));
    }
    let storm_max = most_counted(write.storm_window_start_unix_ms, now);
    if write.storm_alert_count > storm_max {
        return Err(violation("storm_alert_count", format!("at most {storm_max} for a storm window of that age")));
    }
    if write.resources_omitted > storm_max {
        return Err(violation("resources_omitted", format!("at most {storm_max} for a storm window of that age")));
    }
    if let Some(signal) = &write.signal {
        check_signal(signal, now).map_err(|(field, expected)| violation(&format!("signal.{field}"), expected))?;
    }
    Ok(())
}

/// The most alerts a window from `start` to `end` (Unix ms; `start` 0 when unknown) can count.
pub fn most_counted(start: UnixMillis, end: UnixMillis) -> u64 {
    let span = if start > 0 { u64::try_from(end.saturating_sub(start)).unwrap_or(0) } else { 0 };
    MAX_COUNT_BURST.saturating_add(span.saturating_mul(MAX_ALERTS_PER_MS))
}

/// Checks a call's shared labels and annotations, which every CR it builds lists: bounded
/// as a signal's own are.
///
/// # Errors
/// The field out of bounds (`shared.labels`, `shared.annotations`) and what it must be.
pub fn check_shared(shared: &pb::SharedValues) -> Result<(), Violation> {
    check_maps(&shared.labels, &shared.annotations)
        .map_err(|(field, expected)| Violation { field: format!("shared.{field}"), expected })
}

fn check_maps(labels: &HashMap<String, String>, annotations: &HashMap<String, String>) -> Result<(), (String, String)> {
    for (field, map, max_value) in
        [("labels", labels, MAX_LABEL_VALUE_BYTES), ("annotations", annotations, MAX_ANNOTATION_VALUE_BYTES)]
    {
        if map.len() > MAX_ENTRIES {
            return Err((field.to_owned(), format!("at most {MAX_ENTRIES} entries")));
        }
        if map.keys().any(|k| k.len() > MAX_KEY_BYTES) {
            return Err((field.to_owned(), format!("keys of at most {MAX_KEY_BYTES} bytes")));
        }
        if map.values().any(|v| v.len() > max_value) {
            return Err((field.to_owned(), format!("values of at most {max_value} bytes")));
        }
    }
    Ok(())
}

fn check_signal(signal: &pb::Signal, now: UnixMillis) -> Result<(), (String, String)> {
    let too_long = |field: &str, max: usize| (field.to_owned(), format!("at most {max} bytes"));
    let strings = [
        ("alert_name", &signal.alert_name, MAX_LABEL_VALUE_BYTES),
        ("source_type", &signal.source_type, MAX_KEY_BYTES),
        ("source", &signal.source, MAX_KEY_BYTES),
    ];
    for (field, value, max) in strings {
        if value.len() > max {
            return Err(too_long(field, max));
        }
    }
    if !signal.namespace.is_empty() && !breakwater_signal::is_dns1123_label(&signal.namespace) {
        return Err(("namespace".into(), "empty or a namespace name (a DNS-1123 label)".into()));
    }
    if let Some(resource) = &signal.resource {
        for (field, value) in [
            ("resource.kind", &resource.kind),
            ("resource.name", &resource.name),
            ("resource.namespace", &resource.namespace),
        ] {
            if value.len() > MAX_LABEL_VALUE_BYTES {
                return Err(too_long(field, MAX_LABEL_VALUE_BYTES));
            }
        }
    }
    check_maps(&signal.labels, &signal.annotations)?;
    if signal.original_payload.len() > MAX_PAYLOAD_BYTES {
        return Err(too_long("original_payload", MAX_PAYLOAD_BYTES));
    }
    let time_ok = |t: i64| t == 0 || (0..=now.saturating_add(MAX_CLOCK_SKEW_MS)).contains(&t);
    for (field, t) in
        [("firing_time_unix_ms", signal.firing_time_unix_ms), ("received_time_unix_ms", signal.received_time_unix_ms)]
    {
        if !time_ok(t) {
            return Err((field.to_owned(), "0, or not after 5 minutes past crd-writer's clock".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn occurrence(count: u64, first: i64, last: i64) -> pb::RemediationWrite {
        pb::RemediationWrite {
            kind: pb::WriteKind::Occurrence.into(),
            first_seen_unix_ms: first,
            last_seen_unix_ms: last,
            occurrence_count: count,
            signal: Some(pb::Signal { namespace: "ops".into(), received_time_unix_ms: NOW, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn counts_are_bounded_by_the_window_length() {
        assert_eq!(check(0, &occurrence(5, NOW - 1000, NOW), NOW), Ok(()));
        assert_eq!(check(0, &occurrence(MAX_COUNT_BURST + 1_000_000, NOW - 1000, NOW), NOW), Ok(()));
        let err = check(2, &occurrence(MAX_COUNT_BURST + 1_000_001, NOW - 1000, NOW), NOW).unwrap_err();
        assert_eq!(err.field, "writes[2].occurrence_count");
        let absurd = check(0, &occurrence(i64::MAX as u64, NOW - 1000, NOW), NOW).unwrap_err();
        assert_eq!(absurd.field, "writes[0].occurrence_count");
        // Without a window start only the burst is allowed.
        assert!(check(0, &occurrence(MAX_COUNT_BURST + 1, 0, NOW), NOW).is_err());
    }

    #[test]
    fn times_are_bounded_and_ordered() {
        let old = check(0, &occurrence(1, NOW - MAX_WINDOW_AGE_MS - 1, NOW), NOW).unwrap_err();
        assert_eq!(old.field, "writes[0].first_seen_unix_ms");
        let ahead = check(0, &occurrence(1, NOW, NOW + MAX_CLOCK_SKEW_MS + 1), NOW).unwrap_err();
        assert_eq!(ahead.field, "writes[0].last_seen_unix_ms");
        let reversed = check(0, &occurrence(1, NOW, NOW - 1), NOW).unwrap_err();
        assert_eq!(reversed.field, "writes[0].last_seen_unix_ms");
        let mut storm = occurrence(1, NOW, NOW);
        storm.storm_window_start_unix_ms = NOW - 10;
        storm.storm_alert_count = u64::MAX;
        assert_eq!(check(0, &storm, NOW).unwrap_err().field, "writes[0].storm_alert_count");
    }

    #[test]
    fn signals_are_bounded_like_the_edge_bounds_them() {
        let mut w = occurrence(1, NOW, NOW);
        if let Some(s) = w.signal.as_mut() {
            s.namespace = "Kube_System".into();
        }
        assert_eq!(check(1, &w, NOW).unwrap_err().field, "writes[1].signal.namespace");
        let mut w = occurrence(1, NOW, NOW);
        if let Some(s) = w.signal.as_mut() {
            s.annotations.insert("description".into(), "x".repeat(MAX_ANNOTATION_VALUE_BYTES + 1));
        }
        assert_eq!(check(0, &w, NOW).unwrap_err().field, "writes[0].signal.annotations");
        let mut w = occurrence(1, NOW, NOW);
        if let Some(s) = w.signal.as_mut() {
            s.labels = (0..=MAX_ENTRIES).map(|i| (format!("l{i}"), String::new())).collect();
        }
        assert_eq!(check(0, &w, NOW).unwrap_err().field, "writes[0].signal.labels");
    }
}
