use super::*;

const WINDOW: DedupWindow = DedupWindow { window_ms: 300_000, copy_window_ms: 120_000 };

#[test]
fn first_firing_is_new() {
    let (v, change) = WINDOW.decide(None, Status::Firing, 1_000);
    assert_eq!(v.decision, Decision::New);
    let expected =
        Record { first_seen: 1_000, last_seen: 1_000, count: 1, placement: Placement::Pending, ends_at: None };
    assert_eq!(v.record, Some(expected.clone()));
    assert_eq!(change, Change::Put(expected));
}

#[test]
fn repeat_inside_window_counts_and_keeps_first_seen() {
    let seen = Record { first_seen: 1_000, last_seen: 2_000, count: 4, placement: Placement::Own, ends_at: None };
    let (v, _) = WINDOW.decide(Some(&seen), Status::Firing, 2_000 + 299_999);
    assert_eq!(v.decision, Decision::Duplicate);
    let r = v.record.unwrap_or_else(|| panic!("duplicate carries its record"));
    assert_eq!((r.first_seen, r.last_seen, r.count), (1_000, 301_999, 5));
}

#[test]
fn window_slides_from_last_seen_and_expires_exactly_at_its_length() {
    let seen = Record { first_seen: 0, last_seen: 100_000, count: 2, placement: Placement::Own, ends_at: None };
    assert_eq!(WINDOW.decide(Some(&seen), Status::Firing, 399_999).0.decision, Decision::Duplicate);
    assert_eq!(WINDOW.decide(Some(&seen), Status::Firing, 400_000).0.decision, Decision::New);
}

#[test]
fn resolution_closes_the_window() {
    let seen = Record { first_seen: 0, last_seen: 10, count: 2, placement: Placement::Own, ends_at: None };
    let (v, change) = WINDOW.decide(Some(&seen), Status::Resolved, 20);
    assert_eq!(v.decision, Decision::Resolved);
    assert_eq!(change, Change::Remove);
    assert_eq!(WINDOW.decide(None, Status::Resolved, 20).0.decision, Decision::ResolvedUnknown);
}

#[test]
fn placement_survives_duplicates() {
    let bound = Placement::Bound(Binding { namespace: "prod".into(), name: "storm-x".into() });
    let seen = Record { first_seen: 0, last_seen: 0, count: 1, placement: bound.clone(), ends_at: None };
    let (v, _) = WINDOW.decide(Some(&seen), Status::Firing, 5);
    assert_eq!(v.record.map(|r| r.placement), Some(bound));
}

#[test]
fn clock_going_backwards_does_not_move_last_seen_back() {
    let seen = Record { first_seen: 0, last_seen: 50, count: 1, placement: Placement::Own, ends_at: None };
    let (v, _) = WINDOW.decide(Some(&seen), Status::Firing, 40);
    assert_eq!(v.record.map(|r| r.last_seen), Some(50));
}

#[test]
fn an_end_closes_the_window_although_alerts_keep_coming_and_repeats_keep_it() {
    let seen = Record { first_seen: 0, last_seen: 1_000, count: 3, placement: Placement::Own, ends_at: Some(2_000) };
    let (v, change) = WINDOW.decide(Some(&seen), Status::Firing, 1_999);
    assert_eq!(v.decision, Decision::Duplicate);
    let Change::Put(next) = change else { panic!("a duplicate is put") };
    assert_eq!(next.ends_at, Some(2_000), "a repeat keeps the end");
    let (v, change) = WINDOW.decide(Some(&next), Status::Firing, 2_000);
    assert_eq!(v.decision, Decision::New, "the end has come: a new incident");
    let Change::Put(new) = change else { panic!("a new incident is put") };
    assert_eq!(new.ends_at, None, "a new window has no end");
}

#[test]
fn records_read_back_as_written_with_and_without_an_end() {
    let bound = Placement::Bound(Binding { namespace: "prod".into(), name: "rr-1".into() });
    for ends_at in [None, Some(-5), Some(9_000)] {
        for placement in [Placement::Pending, Placement::Own, bound.clone()] {
            let r = Record { first_seen: 10, last_seen: 20, count: 3, placement, ends_at };
            assert_eq!(Record::decode(&r.encode()), Some(r.clone()), "{}", r.encode());
        }
    }
    assert_eq!(Record::decode("1|2|3||x"), None, "an end that is not a number");
}
