use super::*;

const WINDOW: DedupWindow = DedupWindow { window_ms: 300_000, copy_window_ms: 120_000 };

#[test]
fn first_firing_is_new() {
    let (v, change) = WINDOW.decide(None, Status::Firing, 1_000);
    assert_eq!(v.decision, Decision::New);
    let expected = Record { first_seen: 1_000, last_seen: 1_000, count: 1, placement: Placement::Pending };
    assert_eq!(v.record, Some(expected.clone()));
    assert_eq!(change, Change::Put(expected));
}

#[test]
fn repeat_inside_window_counts_and_keeps_first_seen() {
    let seen = Record { first_seen: 1_000, last_seen: 2_000, count: 4, placement: Placement::Own };
    let (v, _) = WINDOW.decide(Some(&seen), Status::Firing, 2_000 + 299_999);
    assert_eq!(v.decision, Decision::Duplicate);
    let r = v.record.unwrap_or_else(|| panic!("duplicate carries its record"));
    assert_eq!((r.first_seen, r.last_seen, r.count), (1_000, 301_999, 5));
}

#[test]
fn window_slides_from_last_seen_and_expires_exactly_at_its_length() {
    let seen = Record { first_seen: 0, last_seen: 100_000, count: 2, placement: Placement::Own };
    assert_eq!(WINDOW.decide(Some(&seen), Status::Firing, 399_999).0.decision, Decision::Duplicate);
    assert_eq!(WINDOW.decide(Some(&seen), Status::Firing, 400_000).0.decision, Decision::New);
}

#[test]
fn resolution_closes_the_window() {
    let seen = Record { first_seen: 0, last_seen: 10, count: 2, placement: Placement::Own };
    let (v, change) = WINDOW.decide(Some(&seen), Status::Resolved, 20);
    assert_eq!(v.decision, Decision::Resolved);
    assert_eq!(change, Change::Remove);
    assert_eq!(WINDOW.decide(None, Status::Resolved, 20).0.decision, Decision::ResolvedUnknown);
}

#[test]
fn placement_survives_duplicates() {
    let bound = Placement::Bound(Binding { namespace: "prod".into(), name: "storm-x".into() });
    let seen = Record { first_seen: 0, last_seen: 0, count: 1, placement: bound.clone() };
    let (v, _) = WINDOW.decide(Some(&seen), Status::Firing, 5);
    assert_eq!(v.record.map(|r| r.placement), Some(bound));
}

#[test]
fn clock_going_backwards_does_not_move_last_seen_back() {
    let seen = Record { first_seen: 0, last_seen: 50, count: 1, placement: Placement::Own };
    let (v, _) = WINDOW.decide(Some(&seen), Status::Firing, 40);
    assert_eq!(v.record.map(|r| r.last_seen), Some(50));
}
