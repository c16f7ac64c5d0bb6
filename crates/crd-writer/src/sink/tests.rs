use std::collections::BTreeMap;

use super::*;
use crate::crd::{Deduplication, Priority, Severity, TargetType};

fn spec(is_storm: bool) -> RemediationRequestSpec {
    RemediationRequestSpec {
        signal_fingerprint: "f".repeat(64),
        signal_name: "PodCrashLooping".to_owned(),
        severity: Severity::Warning,
        environment: "staging".to_owned(),
        priority: Priority::P2,
        signal_type: "prometheus-alert".to_owned(),
        signal_source: "prometheus".to_owned(),
        target_type: TargetType::Kubernetes,
        firing_time: time(1000),
        received_time: time(1000),
        deduplication: Deduplication {
            is_duplicate: false,
            first_seen: time(1000),
            last_seen: time(5000),
            occurrence_count: 7,
            previous_remediation_request_ref: None,
        },
        is_storm,
        storm_type: None,
        storm_window: None,
        storm_alert_count: is_storm.then_some(10),
        affected_resources: if is_storm { vec!["ns:Pod:a".to_owned(), "ns:Pod:b".to_owned()] } else { Vec::new() },
        affected_resources_omitted: is_storm.then_some(0),
        signal_labels: BTreeMap::new(),
        signal_annotations: BTreeMap::new(),
        provider_data: None,
        original_payload: None,
        timeout_config: None,
    }
}

fn resources(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn counts_only_grow() {
    let mut s = spec(false);
    let lower = CountUpdate { occurrence_count: 3, last_seen: 2000, ..CountUpdate::default() };
    assert!(!lower.apply_to(&mut s, 100), "lower counts change nothing");
    assert_eq!(s.deduplication.occurrence_count, 7);
    assert_eq!(s.deduplication.last_seen, time(5000));

    let higher = CountUpdate { occurrence_count: 9, last_seen: 9000, ..CountUpdate::default() };
    assert!(higher.apply_to(&mut s, 100));
    assert_eq!(s.deduplication.occurrence_count, 9);
    assert_eq!(s.deduplication.last_seen, time(9000));
    assert!(!higher.apply_to(&mut s, 100), "applying twice is a no-op");
}

#[test]
fn storm_fields_are_ignored_on_incident_crs() {
    let mut s = spec(false);
    let update =
        CountUpdate { storm_alert_count: 50, affected_resources: resources(&["ns:Pod:x"]), ..CountUpdate::default() };
    assert!(!update.apply_to(&mut s, 100));
    assert_eq!(s.storm_alert_count, None);
    assert!(s.affected_resources.is_empty());
}

#[test]
fn storm_resources_union_in_order_and_cap() {
    let mut s = spec(true);
    let update = CountUpdate {
        storm_alert_count: 12,
        affected_resources: resources(&["ns:Pod:b", "ns:Pod:c", "ns:Pod:d", "ns:Pod:e"]),
        affected_resources_omitted: 1,
        ..CountUpdate::default()
    };
    assert!(update.apply_to(&mut s, 4));
    assert_eq!(s.storm_alert_count, Some(12));
    assert_eq!(s.affected_resources, resources(&["ns:Pod:a", "ns:Pod:b", "ns:Pod:c", "ns:Pod:d"]));
    // The storm service's 1 plus `e`, which did not fit.
    assert_eq!(s.affected_resources_omitted, Some(2));
    assert!(!update.apply_to(&mut s, 4), "replaying the same update is idempotent");
}

#[test]
fn pending_updates_merge_by_max_and_union() {
    let mut a = CountUpdate {
        occurrence_count: 5,
        last_seen: 100,
        storm_alert_count: 3,
        affected_resources: resources(&["x", "y"]),
        affected_resources_omitted: 4,
    };
    let b = CountUpdate {
        occurrence_count: 2,
        last_seen: 300,
        storm_alert_count: 8,
        affected_resources: resources(&["y", "z", "w"]),
        affected_resources_omitted: 1,
    };
    a.merge(&b, 3);
    assert_eq!(a.occurrence_count, 5);
    assert_eq!(a.last_seen, 300);
    assert_eq!(a.storm_alert_count, 8);
    assert_eq!(a.affected_resources, resources(&["x", "y", "z"]));
    assert_eq!(a.affected_resources_omitted, 4, "max(4, 1 + 1 dropped)");
    assert!(!a.is_empty());
    assert!(CountUpdate::default().is_empty());
}

#[test]
fn retry_after_only_for_unavailable() {
    let unavailable = SinkError::Unavailable {
        attempts: 5,
        retry_after: Some(Duration::from_secs(2)),
        source: ::kube::Error::TlsRequired,
    };
    assert_eq!(unavailable.retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(unavailable.metric_label(), "unavailable");
    assert_eq!(SinkError::Conflict { attempts: 10 }.retry_after(), None);
}
