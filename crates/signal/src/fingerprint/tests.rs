use std::collections::HashMap;

use super::*;

#[test]
fn matches_reference_formula() {
    // sha256("HighMemory:prod:Pod:api-1"), computed independently with `sha256sum`.
    let fp = fingerprint_of(&["HighMemory", "prod", "Pod", "api-1"]);
    assert_eq!(fp.len(), 64);
    assert!(is_valid(&fp));
    assert_eq!(fp, "dd1b523fcf6b1619e001fb273c5283b567f697ca44cba3a4334588f2e8fdf46b");
}

#[test]
fn severity_is_not_part_of_resource_rule() {
    let mut labels = HashMap::from([("severity".to_string(), "critical".to_string())]);
    let a = FingerprintRule::Resource.apply("A", "ns", "Pod", "p", Layered::own(&labels));
    labels.insert("severity".into(), "warning".into());
    let b = FingerprintRule::Resource.apply("A", "ns", "Pod", "p", Layered::own(&labels));
    assert_eq!(a, b);
}

#[test]
fn namespace_splits_incidents() {
    let labels = HashMap::new();
    let a = FingerprintRule::Resource.apply("A", "ns1", "Pod", "p", Layered::own(&labels));
    let b = FingerprintRule::Resource.apply("A", "ns2", "Pod", "p", Layered::own(&labels));
    assert_ne!(a, b);
}

#[test]
fn label_rule_uses_listed_labels_in_order() {
    let rule = FingerprintRule::Labels(vec!["alertname".into(), "cluster".into()]);
    let labels = HashMap::from([
        ("alertname".to_string(), "A".to_string()),
        ("cluster".to_string(), "eu".to_string()),
        ("pod".to_string(), "p1".to_string()),
    ]);
    let mut other_pod = labels.clone();
    other_pod.insert("pod".into(), "p2".into());
    assert_eq!(
        rule.apply("A", "ns", "Pod", "p1", Layered::own(&labels)),
        rule.apply("A", "ns", "Pod", "p2", Layered::own(&other_pod))
    );
    assert_eq!(
        rule.apply("A", "ns", "Pod", "p1", Layered::own(&labels)),
        fingerprint_of(&["alertname=A", "cluster=eu"])
    );
}

#[test]
fn validity() {
    assert!(!is_valid("abc"));
    assert!(!is_valid(&"A".repeat(64)));
    assert!(is_valid(&"a".repeat(64)));
}

#[test]
fn delivery_keys_are_fixed_size_and_unambiguous() {
    let key = delivery_key(&["{}:{alertname=\"A\"}", "abc", "firing"]);
    assert_eq!(key.len(), 32);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(key, delivery_key(&["{}:{alertname=\"A\"}", "abc", "firing"]));
    // The same characters split differently are another delivery.
    assert_ne!(delivery_key(&["ab", "c"]), delivery_key(&["a", "bc"]));
    assert_ne!(delivery_key(&["a:b"]), delivery_key(&["a", "b"]));
}
