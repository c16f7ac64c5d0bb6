use std::time::Duration;

use super::{Lifecycle, Verdict};
use crate::crd::CrRef;
use crate::sink::{CrPhase, LatestCr};

const T0: i64 = 1_800_000_000_000;

fn at(name: &str) -> CrRef {
    CrRef { namespace: "prod".into(), name: name.into() }
}

fn latest(name: &str, phase: CrPhase) -> Option<LatestCr> {
    Some(LatestCr { at: at(name), phase })
}

fn finished(completed_at: Option<i64>, resolved_at: Option<i64>) -> CrPhase {
    CrPhase::Finished { completed_at, resolved_at }
}

#[test]
fn no_cr_or_a_resolved_one_opens_a_new_cr() {
    let lifecycle = Lifecycle::new(Duration::from_secs(60));
    assert_eq!(lifecycle.decide(None, T0), Verdict::Create { previous: None });
    assert_eq!(lifecycle.decide(latest("a", CrPhase::Resolved), T0), Verdict::Create { previous: Some(at("a")) });
}

#[test]
fn an_open_cr_counts_whatever_its_age() {
    let lifecycle = Lifecycle::new(Duration::from_secs(60));
    let verdict = lifecycle.decide(latest("a", CrPhase::Open), T0 + 86_400_000);
    assert_eq!(verdict, Verdict::CountOn { at: at("a"), after_completion: false });
}

#[test]
fn a_finished_cr_counts_until_the_cooldown_passed() {
    let lifecycle = Lifecycle::new(Duration::from_secs(60));
    let done = latest("a", finished(Some(T0), None));
    assert_eq!(lifecycle.decide(done.clone(), T0 + 59_999), Verdict::CountOn { at: at("a"), after_completion: true });
    assert_eq!(lifecycle.decide(done, T0 + 60_000), Verdict::Create { previous: Some(at("a")) });
}

#[test]
fn a_resolution_after_the_finish_opens_a_new_cr_at_once() {
    let lifecycle = Lifecycle::new(Duration::from_secs(60));
    let resolved_after = latest("a", finished(Some(T0), Some(T0 + 1)));
    assert_eq!(lifecycle.decide(resolved_after, T0 + 2), Verdict::Create { previous: Some(at("a")) });
    // A resolution before the CR finished does not end the cooldown.
    let resolved_before = latest("a", finished(Some(T0), Some(T0 - 1)));
    assert_eq!(lifecycle.decide(resolved_before, T0 + 2), Verdict::CountOn { at: at("a"), after_completion: true });
}

#[test]
fn without_completed_at_the_cooldown_counts_from_when_it_was_first_seen_finished() {
    let lifecycle = Lifecycle::new(Duration::from_secs(60));
    let done = latest("a", finished(None, None));
    assert_eq!(lifecycle.decide(done.clone(), T0), Verdict::CountOn { at: at("a"), after_completion: true });
    assert_eq!(lifecycle.decide(done.clone(), T0 + 59_000), Verdict::CountOn { at: at("a"), after_completion: true });
    assert_eq!(lifecycle.decide(done, T0 + 60_000), Verdict::Create { previous: Some(at("a")) });
}

#[test]
fn a_finished_crs_window_ends_when_its_cooldown_does() {
    let lifecycle = Lifecycle::new(Duration::from_secs(60));
    let end = |phase| lifecycle.window_end(&at("a"), phase, T0 + 5_000);
    assert_eq!(end(CrPhase::Open), None, "an open CR keeps counting");
    assert_eq!(end(CrPhase::Resolved), None);
    assert_eq!(end(finished(Some(T0), None)), Some(T0 + 60_000), "the cooldown after completedAt");
    assert_eq!(end(finished(Some(T0), Some(T0 - 1))), Some(T0 + 60_000), "resolved before the finish");
    assert_eq!(end(finished(Some(T0), Some(T0 + 2_000))), Some(T0 + 2_000), "resolved after it: over then");
    // Without completedAt, from when crd-writer first saw it finished, the same each time.
    assert_eq!(end(finished(None, None)), Some(T0 + 65_000));
    assert_eq!(lifecycle.window_end(&at("a"), finished(None, None), T0 + 9_000), Some(T0 + 65_000));
}
