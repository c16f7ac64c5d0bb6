use super::*;

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[test]
fn incident_names_are_deterministic_and_dns1123() {
    let fp = fingerprint_of(&["A", "ns", "Pod", "p"]);
    let a = incident_cr_name(&fp, 1_731_868_032_123);
    assert_eq!(a, incident_cr_name(&fp, 1_731_868_032_123));
    assert_eq!(a, format!("rr-{}-1731868032123", &fp[..16]));
    assert!(is_dns1123_label(&a));
    assert_ne!(a, incident_cr_name(&fp, 1_731_868_032_124));
}

#[test]
fn odd_fingerprints_still_give_valid_names() {
    for fp in ["", "UPPER", "ünïcode", "x".repeat(300).as_str()] {
        assert!(is_dns1123_label(&incident_cr_name(fp, 0)), "{fp}");
    }
}

#[test]
fn storm_names_are_per_namespace_and_alertname() {
    let a = storm_cr_name("prod", "PodCrash", 10);
    assert!(is_dns1123_label(&a));
    assert_ne!(a, storm_cr_name("dev", "PodCrash", 10));
    assert_ne!(a, storm_cr_name("prod", "Other", 10));
}

#[test]
fn resource_ids() {
    assert_eq!(resource_id("prod", "Pod", "p"), "prod:Pod:p");
    assert_eq!(resource_id("", "Node", "n1"), "Node:n1");
}

#[test]
fn storm_names_parse_back() {
    let name = storm_cr_name("prod", "PodCrash", 1_700_000_000_123);
    let (id, start) = parse_storm_cr_name(&name).unwrap();
    assert_eq!((id, start), (&fingerprint_of(&["prod", "PodCrash"])[..16], 1_700_000_000_123));
    for other in ["rr-0123456789abcdef-1", "storm-xyz-1", "storm-0123456789abcdef-", "storm-0123456789abcdef--5"] {
        assert_eq!(parse_storm_cr_name(other), None, "{other}");
    }
}
