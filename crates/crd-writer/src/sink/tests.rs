use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::crd::{Deduplication, Priority, RemediationRequestStatus, Severity, TargetType};

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
            occurrences_after_completion: None,
            tally: None,
            resolved_at: None,
        },
        is_storm,
        storm_type: None,
        storm_window: None,
        storm_window_start: None,
        storm_alert_count: is_storm.then_some(10),
        storm_alerts_carried: None,
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
        window_start: 0,
        last_seen: 100,
        storm_alert_count: 3,
        affected_resources: resources(&["x", "y"]),
        affected_resources_omitted: 4,
        resolved_at: 0,
        fingerprint: String::new(),
    };
    let b = CountUpdate {
        occurrence_count: 2,
        window_start: 0,
        last_seen: 300,
        storm_alert_count: 8,
        affected_resources: resources(&["y", "z", "w"]),
        affected_resources_omitted: 1,
        resolved_at: 0,
        fingerprint: String::new(),
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

#[test]
fn increments_add_and_last_seen_only_moves_forward() {
    let mut s = spec(false);
    assert!(add_occurrences_to(&mut s, 3, 4000));
    assert_eq!(s.deduplication.occurrence_count, 10);
    assert_eq!(s.deduplication.last_seen, time(5000), "an older lastSeen is kept");
    assert!(add_occurrences_to(&mut s, 1, 0), "applying again counts again");
    assert_eq!(s.deduplication.occurrence_count, 11);
    assert!(add_occurrences_to(&mut s, 0, 6000));
    assert_eq!(s.deduplication.last_seen, time(6000));
    assert!(!add_occurrences_to(&mut s, 0, 6000));
}

/// A CR of `spec(false)`'s fingerprint, labelled as `build` labels it.
fn cr(name: &str, phase: Option<&str>, created: Option<i64>, created_at: Option<i64>) -> RemediationRequest {
    let spec = spec(false);
    let labels = BTreeMap::from([
        (LABEL_FINGERPRINT.to_owned(), label_value(&spec.signal_fingerprint)),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
    ]);
    let annotations = created_at.map(|ms| BTreeMap::from([(ANNOTATION_CREATED_AT.to_owned(), time(ms).0.to_string())]));
    RemediationRequest {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("ns".to_owned()),
            labels: Some(labels),
            annotations,
            creation_timestamp: created.map(time),
            ..ObjectMeta::default()
        },
        spec,
        status: phase.map(|p| RemediationRequestStatus { overall_phase: Some(p.to_owned()), ..Default::default() }),
    }
}

fn name_of(rr: Option<RemediationRequest>) -> Option<String> {
    rr.and_then(|rr| rr.metadata.name)
}

#[test]
fn only_unfinished_crs_are_open() {
    for phase in TERMINAL_PHASES {
        assert!(!is_open(&cr("a", Some(phase), None, None)), "{phase}");
    }
    for phase in [None, Some(""), Some("Pending"), Some("Processing"), Some("completed")] {
        assert!(is_open(&cr("a", phase, None, None)), "{phase:?}");
    }
    // Resolved after its last occurrence: closed; an occurrence after the resolution reopens.
    let mut resolved = cr("a", None, None, None);
    let resolution = CountUpdate { resolved_at: 6000, ..CountUpdate::default() };
    assert!(resolution.is_resolution_only());
    assert!(resolution.apply_to(&mut resolved.spec, 100));
    assert!(!resolution.apply_to(&mut resolved.spec, 100), "recorded once");
    assert!(!is_open(&resolved));
    resolved.spec.deduplication.last_seen = time(7000);
    assert!(is_open(&resolved));
}

#[test]
fn the_latest_open_cr_is_chosen_by_creation_time() {
    let fp = "f".repeat(64);
    let picked = latest_open(
        [
            cr("by-timestamp", None, Some(3_000), Some(1_000)),
            cr("older", None, Some(2_000), Some(9_000)),
            cr("closed", Some("Failed"), Some(9_000), None),
        ],
        &fp,
    );
    assert_eq!(name_of(picked), Some("by-timestamp".to_owned()), "creationTimestamp comes first");

    // Without creationTimestamp (the directory and memory sinks), the created-at annotation.
    let picked = latest_open([cr("b", None, None, Some(2_000)), cr("a", None, None, Some(1_000))], &fp);
    assert_eq!(name_of(picked), Some("b".to_owned()));
    // The same second on the API server: the annotation's milliseconds decide.
    let picked = latest_open([cr("a", None, Some(2_000), Some(2_400)), cr("b", None, Some(2_000), Some(2_100))], &fp);
    assert_eq!(name_of(picked), Some("a".to_owned()));
    assert_eq!(latest_open([cr("closed", Some("Timeout"), None, None)], &fp), None);
}

#[test]
fn latest_open_needs_the_label_and_the_whole_fingerprint() {
    let fp = "f".repeat(64);
    let mut unlabelled = cr("unlabelled", None, None, None);
    unlabelled.metadata.labels = None;
    assert_eq!(latest_open([unlabelled], &fp), None);

    let mut near = cr("near", None, None, None);
    near.spec.signal_fingerprint = format!("{}e", &fp[..63]);
    assert_eq!(latest_open([near], &fp), None, "the label is cut to 63 characters; the spec is not");

    let mut storm = cr("storm", None, None, None);
    storm.spec.is_storm = true;
    assert_eq!(latest_open([storm], &fp), None);
    assert_eq!(name_of(latest_open([cr("ok", None, None, None)], &fp)), Some("ok".to_owned()));

    let mut foreign = cr("foreign", None, None, None);
    foreign.metadata.labels.get_or_insert_default().insert(LABEL_MANAGED_BY.to_owned(), "someone".to_owned());
    assert_eq!(latest_open([foreign], &fp), None, "another writer's CR is not an incident's");
    let mut adopted = cr("adopted", None, None, None);
    adopted.metadata.labels.get_or_insert_default().insert(LABEL_MANAGED_BY.to_owned(), MANAGED_BY_REPLACED.to_owned());
    assert_eq!(name_of(latest_open([adopted], &fp)), Some("adopted".to_owned()), "the replaced gateway's is adopted");
}

#[test]
fn the_latest_incident_says_where_its_life_stands() {
    let fp = "f".repeat(64);
    let at = |name: &str| CrRef { namespace: "ns".to_owned(), name: name.to_owned() };
    // An open CR wins over a later finished one.
    let latest =
        latest_incident([cr("open", None, Some(1_000), None), cr("done", Some("Completed"), Some(2_000), None)], &fp);
    assert_eq!(latest, Some(LatestCr { at: at("open"), phase: CrPhase::Open }));
    let mut done = cr("done", Some("Completed"), Some(2_000), None);
    if let Some(status) = done.status.as_mut() {
        status.completed_at = Some(time(3_000));
    }
    done.spec.deduplication.resolved_at = Some(time(4_000));
    let latest = latest_incident([cr("older", Some("Failed"), Some(1_000), None), done], &fp);
    let phase = CrPhase::Finished { completed_at: Some(3_000), resolved_at: Some(4_000) };
    assert_eq!(latest, Some(LatestCr { at: at("done"), phase }));
    let mut resolved = cr("resolved", None, None, None);
    resolved.spec.deduplication.resolved_at = Some(time(9_000));
    assert_eq!(latest_incident([resolved], &fp).map(|l| l.phase), Some(CrPhase::Resolved));
}

#[test]
fn counts_on_a_finished_cr_are_marked_after_completion() {
    let mut spec = spec(false);
    assert!(change_counts(&mut spec, false, |s| add_occurrences_to(s, 2, 0)));
    assert_eq!(spec.deduplication.occurrences_after_completion, None, "not finished: not marked");
    assert!(change_counts(&mut spec, true, |s| add_occurrences_to(s, 3, 0)));
    assert_eq!(spec.deduplication.occurrence_count, 12);
    assert_eq!(spec.deduplication.occurrences_after_completion, Some(3));
    assert!(!change_counts(&mut spec, true, |_| false));
    assert_eq!(spec.deduplication.occurrences_after_completion, Some(3));
}

/// Counts from dedup's windows and from outside them add up; none overwrites another, and
/// each merge is idempotent.
#[test]
fn occurrence_counts_of_windows_and_increments_add_up() {
    let mut s = spec(false);
    s.deduplication.tally = None;
    let window = |start: UnixMillis, count: u64| CountUpdate {
        occurrence_count: count,
        window_start: start,
        ..CountUpdate::default()
    };
    // A CR without a tally (another gateway's, or an older Breakwater's): its 7 are carried.
    assert!(window(1000, 9).apply_to(&mut s, 10));
    assert_eq!(s.deduplication.occurrence_count, 16);
    assert!(!window(1000, 9).apply_to(&mut s, 10), "a retry changes nothing");
    assert!(!window(1000, 3).apply_to(&mut s, 10), "an older count of the window changes nothing");
    // Dedup was down: two alerts counted outside its windows…
    assert!(add_occurrences_to(&mut s, 2, 0));
    assert_eq!(s.deduplication.occurrence_count, 18);
    // …and dedup's next count of its window adds to them instead of swallowing them.
    assert!(window(1000, 10).apply_to(&mut s, 10));
    assert_eq!(s.deduplication.occurrence_count, 19);
    // Dedup lost its state and counts a new window from 1: added, not merged by maximum.
    assert!(window(50_000, 1).apply_to(&mut s, 10));
    assert_eq!(s.deduplication.occurrence_count, 20);
    // A late update of the window before still merges; one older than that was carried.
    assert!(window(1000, 12).apply_to(&mut s, 10));
    assert_eq!(s.deduplication.occurrence_count, 22);
    assert!(window(90_000, 2).apply_to(&mut s, 10));
    assert!(!window(1000, 99).apply_to(&mut s, 10));
    assert_eq!(s.deduplication.occurrence_count, 24);
    let tally = s.deduplication.tally.clone().unwrap_or_default();
    assert_eq!(tally.total(), 24);
    assert_eq!((tally.window_start_ms, tally.window_count), (90_000, 2));
}

/// Storm alerts counted while the storm service was down add to its own count, which later
/// merges by maximum without overwriting them.
#[test]
fn carried_storm_alerts_add_to_the_storm_services_count() {
    let mut s = spec(true);
    assert!(add_occurrences_to(&mut s, 2, 0));
    assert_eq!((s.storm_alert_count, s.storm_alerts_carried), (Some(12), Some(2)));
    let storm = |count: u64| CountUpdate { storm_alert_count: count, ..CountUpdate::default() };
    assert!(!storm(10).apply_to(&mut s, 100), "the storm service's 10 are in already");
    assert!(storm(11).apply_to(&mut s, 100));
    assert_eq!(s.storm_alert_count, Some(13));
    assert_eq!(s.deduplication.occurrence_count, 7, "a storm CR's own occurrences do not move");
}
