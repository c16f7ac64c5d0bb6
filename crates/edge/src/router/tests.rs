use super::*;

const MIB: usize = 1024 * 1024;

#[test]
fn the_budget_charges_body_and_copies_and_refuses_past_it() {
    let budget = Budget::new(64 * MIB);
    // 7 MiB of signals: 0.5 MiB of body plus four copies, 28.5 MiB each; two fit, a third does not.
    let first = budget.reserve(MIB / 2, 7 * MIB).unwrap();
    let second = budget.reserve(MIB / 2, 7 * MIB).unwrap();
    assert!(matches!(budget.reserve(MIB / 2, 7 * MIB), Err(EdgeError::OverBudget)));
    // A small webhook still fits in what is left (64 - 57 MiB).
    let small = budget.reserve(10 * 1024, 1024 * 1024).unwrap();
    drop((first, second, small));
    assert_eq!(budget.permits.available_permits(), 64 * 1024, "every byte is given back");
}

#[test]
fn a_webhook_larger_than_the_budget_runs_alone_rather_than_never() {
    let budget = Budget::new(MIB);
    let alone = budget.reserve(MIB, 100 * MIB).unwrap();
    assert!(matches!(budget.reserve(1, 1), Err(EdgeError::OverBudget)));
    drop(alone);
    assert!(budget.reserve(1, 1).is_ok());
}
