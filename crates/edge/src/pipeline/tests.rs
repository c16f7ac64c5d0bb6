use super::*;

fn signal(labels: usize) -> pb::Signal {
    pb::Signal {
        fingerprint: "ab".repeat(32),
        alert_name: "DiskFull".into(),
        received_time_unix_ms: 7,
        labels: (0..labels).map(|i| (format!("k{i}"), format!("v{i}"))).collect(),
        annotations: [("summary".to_owned(), "disk full".to_owned())].into(),
        original_payload: b"{}".to_vec(),
        ..Default::default()
    }
}

/// A batch of one alert that dedup answered `verdict`.
fn batch(verdict: pb::DedupVerdict) -> Batch {
    Batch {
        targets: vec!["prod".into()],
        dedup: vec![verdict],
        storm: vec![None],
        settled: vec![false],
        ..Batch::default()
    }
}

fn on(name: &str) -> Option<pb::RemediationRef> {
    Some(pb::RemediationRef { namespace: "prod".into(), name: name.into() })
}

fn duplicate(count: u64) -> pb::DedupVerdict {
    pb::DedupVerdict {
        outcome: pb::DedupOutcome::Duplicate.into(),
        remediation: on("rr-abababababababab-1"),
        first_seen_unix_ms: 1,
        last_seen_unix_ms: 7,
        occurrence_count: count,
        ..Default::default()
    }
}

// Issue 10, item 3: repeats carry what their CR needs, not the whole signal, once their
// window's first repeats (which may race the CR's create) have passed.
#[test]
fn a_repeat_carries_its_whole_signal_only_while_it_may_have_to_create_the_cr() {
    for count in 2..=WHOLE_SIGNAL_REPEATS {
        let planned = plan(&batch(duplicate(count)), 0, signal(5));
        let write = planned.write.expect("a repeat is written");
        assert!(!write.signal_identity_only, "repeat {count}");
        assert_eq!(write.signal, Some(signal(5)), "repeat {count} can create the CR");
    }
    let planned = plan(&batch(duplicate(WHOLE_SIGNAL_REPEATS + 1)), 0, signal(5));
    assert_eq!((planned.outcome, planned.occurrence_count), (AlertOutcome::Duplicate, Some(4)));
    let write = planned.write.expect("a repeat is written");
    assert!(write.signal_identity_only);
    assert_eq!(write.kind(), pb::WriteKind::Occurrence);
    assert_eq!(write.occurrence_count, 4, "the absolute count");
    assert_eq!(write.remediation, on("rr-abababababababab-1"));
    let carried = write.signal.expect("the identity");
    assert_eq!(
        (carried.fingerprint.as_str(), carried.alert_name.as_str()),
        (signal(0).fingerprint.as_str(), "DiskFull")
    );
    assert!(carried.labels.is_empty() && carried.annotations.is_empty() && carried.original_payload.is_empty());
    assert_eq!((planned.fingerprint.as_str(), planned.alert_name.as_str()), (carried.fingerprint.as_str(), "DiskFull"));
}

#[test]
fn resolutions_carry_the_signals_identity_only() {
    let resolved = pb::DedupVerdict { outcome: pb::DedupOutcome::Resolved.into(), ..duplicate(9) };
    let unknown = pb::DedupVerdict { outcome: pb::DedupOutcome::ResolvedUnknown.into(), ..Default::default() };
    for (verdict, outcome) in [(resolved, AlertOutcome::Resolved), (unknown, AlertOutcome::ResolvedUnknown)] {
        let planned = plan(&batch(verdict), 0, signal(5));
        assert_eq!(planned.outcome, outcome);
        let write = planned.write.expect("a resolution is written");
        assert_eq!(write.kind(), pb::WriteKind::Resolution);
        assert!(write.signal_identity_only, "{outcome:?}");
        assert!(write.signal.is_some_and(|s| s.labels.is_empty()), "{outcome:?}");
        assert_eq!(write.last_seen_unix_ms, 7, "resolved when received");
    }
}

#[test]
fn a_new_incident_carries_its_whole_signal() {
    let new = pb::DedupVerdict { outcome: pb::DedupOutcome::New.into(), ..duplicate(1) };
    let planned = plan(&batch(new), 0, signal(5));
    assert_eq!(planned.outcome, AlertOutcome::Created);
    let write = planned.write.expect("a create is written");
    assert!(!write.signal_identity_only);
    assert_eq!(write.signal, Some(signal(5)));
}

/// Dedup at an address where nothing listens: any call to it fails.
fn unreachable_dedup() -> DedupClient {
    let urls = ComponentUrls { dedup: "http://127.0.0.1:1".into(), ..ComponentUrls::default() };
    Components::connect_lazy(&urls, Duration::from_secs(1)).expect("valid URLs").dedup
}

// Issue 10, item 1: a repeat of an incident whose first alert is in the same webhook is placed
// where the edge placed that alert, without asking dedup (nothing answers here).
#[tokio::test]
async fn repeats_of_this_batchs_new_incidents_are_placed_without_asking_dedup() {
    let new = pb::DedupVerdict { outcome: pb::DedupOutcome::New.into(), remediation: on("rr-own"), ..duplicate(1) };
    let pending = pb::DedupVerdict { remediation: None, placement_pending: true, ..duplicate(2) };
    let storm_ref = on("storm-0123456789abcdef-1");
    let folded = pb::StormVerdict {
        outcome: pb::StormOutcome::Joined.into(),
        remediation: storm_ref.clone(),
        ..Default::default()
    };
    for (storm, expected) in [
        (
            None,
            Some(pb::RemediationRef { namespace: "prod".into(), name: incident_cr_name(&signal(0).fingerprint, 1) }),
        ),
        (Some(folded), storm_ref),
    ] {
        let mut batch = Batch {
            signals: vec![signal(1), signal(1), signal(1)],
            targets: vec!["prod".into(); 3],
            dedup: vec![new.clone(), pending.clone(), pb::DedupVerdict { occurrence_count: 3, ..pending.clone() }],
            storm: vec![storm.clone(), None, None],
            ..Batch::default()
        };
        resolve_pending_repeats(&unreachable_dedup(), &mut batch).await.expect("dedup was not asked");
        assert_eq!(batch.dedup[1].remediation, expected, "storm {storm:?}");
        assert_eq!(batch.dedup[2].remediation, expected, "storm {storm:?}");
    }
    // A repeat of an incident opened by another webhook still asks dedup.
    let mut batch = Batch {
        signals: vec![signal(1)],
        targets: vec!["prod".into()],
        dedup: vec![pending],
        storm: vec![None],
        ..Batch::default()
    };
    assert!(resolve_pending_repeats(&unreachable_dedup(), &mut batch).await.is_err(), "dedup is asked");
}
