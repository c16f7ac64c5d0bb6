use super::*;
use breakwater_signal::fingerprint_of;
use serde_json::json;

fn parse_json(v: &serde_json::Value) -> Result<Vec<pb::Signal>, EdgeError> {
    parse(v.to_string().as_bytes(), 5, &FingerprintRule::Resource)
        .map(|incoming| incoming.into_iter().map(|i| i.signal).collect())
}

fn oom_event() -> serde_json::Value {
    json!({
        "type": "Warning", "reason": "OOMKilled", "message": "container killed", "count": 3,
        "involvedObject": {"kind": "Pod", "namespace": "prod", "name": "api-1"},
        "firstTimestamp": "2025-11-01T10:00:00Z", "lastTimestamp": "2025-11-01T10:05:00Z",
        "source": {"component": "kubelet", "host": "node-1"}
    })
}

#[test]
fn warning_event_becomes_a_critical_signal_with_synthetic_labels() {
    let s = parse_json(&oom_event()).unwrap();
    assert_eq!(s.len(), 1);
    let s = &s[0];
    assert_eq!(s.alert_name, "OOMKilled");
    assert_eq!(s.fingerprint, fingerprint_of(&["OOMKilled", "prod", "Pod", "api-1"]));
    assert_eq!(s.severity(), pb::Severity::Critical);
    assert_eq!(s.labels["kubernaut.io/event-source"], "kubelet");
    assert_eq!(s.labels["kubernaut.io/event-type"], "warning");
    assert_eq!(s.labels["kubernaut.io/resource-kind"], "pod");
    assert_eq!(s.annotations["kubernaut.io/event-count"], "3");
    assert_eq!(s.annotations["kubernaut.io/source-host"], "node-1");
    assert_eq!(s.firing_time_unix_ms, 1_761_991_200_000);
    assert_eq!(s.source_type, SOURCE_TYPE);
}

#[test]
fn cluster_scoped_objects_hash_with_an_empty_namespace() {
    let mut e = oom_event();
    e["reason"] = json!("NodePressure");
    e["involvedObject"] = json!({"kind": "Node", "name": "n1"});
    let s = parse_json(&e).unwrap();
    assert_eq!(s[0].namespace, "");
    assert_eq!(s[0].fingerprint, fingerprint_of(&["NodePressure", "", "Node", "n1"]));
    assert_eq!(s[0].severity(), pb::Severity::Warning);
}

#[test]
fn rejections_in_reference_order() {
    let detail = |e: serde_json::Value| match parse_json(&e) {
        Err(EdgeError::BadRequest(d)) => d,
        other => panic!("expected 400, got {other:?}"),
    };
    assert!(detail(json!("x")).starts_with("invalid JSON"));
    assert_eq!(detail(json!({"type": "Warning"})), "missing reason field");
    assert_eq!(detail(json!({"reason": "R", "involvedObject": {"name": "n"}})), "missing involvedObject.kind field");
    assert_eq!(detail(json!({"reason": "R", "involvedObject": {"kind": "Pod"}})), "missing involvedObject.name field");
    let mut normal = oom_event();
    normal["type"] = json!("Normal");
    assert_eq!(detail(normal), "normal events not processed (informational only)");
    let mut odd = oom_event();
    odd["type"] = json!("Odd");
    assert_eq!(detail(odd), "unsupported event type: Odd (expected Warning or Error)");
}

#[test]
fn an_event_objects_uid_and_count_identify_its_delivery() {
    let delivery = |e: &serde_json::Value| {
        parse(e.to_string().as_bytes(), 5, &FingerprintRule::Resource).unwrap()[0].delivery.clone()
    };
    assert_eq!(delivery(&oom_event()), None, "no uid: every delivery counts");
    let mut event = oom_event();
    event["metadata"] = json!({"uid": "u-1"});
    event["count"] = json!(3);
    let key = delivery(&event);
    assert!(key.as_ref().is_some_and(|k| k.len() == 32));
    assert_eq!(key, delivery(&event));
    event["count"] = json!(4);
    assert_ne!(key, delivery(&event), "the event recurred: a new delivery");
}

#[test]
fn a_long_message_is_cut_and_listed() {
    let caps = crate::adapters::Caps { annotation_value_bytes: 300, ..Default::default() };
    let e = json!({"type": "Warning", "reason": "BackOff", "message": "m".repeat(5000),
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "prod"}});
    let signals = parse_capped(e.to_string().as_bytes(), 5, &FingerprintRule::Resource, &caps).unwrap();
    let a = &signals[0].signal.annotations;
    assert_eq!(a["kubernaut.io/event-message"].len(), 300);
    assert_eq!(a[crate::adapters::TRUNCATED_ANNOTATION], "annotations.kubernaut.io/event-message");
}
