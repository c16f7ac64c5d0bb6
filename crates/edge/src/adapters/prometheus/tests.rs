use super::*;
use breakwater_signal::fingerprint_of;
use serde_json::json;

fn parse_json(v: serde_json::Value) -> Result<Vec<pb::Signal>, EdgeError> {
    parse(v.to_string().as_bytes(), 1_000, &FingerprintRule::Resource)
        .map(|incoming| incoming.into_iter().map(|i| i.signal).collect())
}

fn bad_request(v: serde_json::Value) -> String {
    match parse_json(v) {
        Err(EdgeError::BadRequest(detail)) => detail,
        other => panic!("expected 400, got {other:?}"),
    }
}

#[test]
fn every_alert_of_the_batch_becomes_a_signal() {
    let signals = parse_json(json!({
        "version": "4", "status": "firing",
        "commonLabels": {"team": "platform"},
        "alerts": [
            {"status": "firing", "labels": {"alertname": "A", "namespace": "prod", "pod": "p1", "severity": "critical"}, "startsAt": "2025-11-01T10:00:00Z"},
            {"status": "firing", "labels": {"alertname": "B", "namespace": "prod", "deployment": "d"}},
            {"status": "resolved", "labels": {"alertname": "C", "node": "n1"}}
        ]
    }))
    .unwrap();
    assert_eq!(signals.len(), 3);
    let a = &signals[0];
    assert_eq!(a.fingerprint, fingerprint_of(&["A", "prod", "Pod", "p1"]));
    assert_eq!(a.severity(), pb::Severity::Critical);
    assert_eq!(a.firing_time_unix_ms, 1_761_991_200_000);
    assert_eq!(a.labels.get("team").map(String::as_str), Some("platform"));
    assert_eq!(a.source_type, SOURCE_TYPE);
    let b = &signals[1];
    assert_eq!(b.resource.as_ref().map(|r| r.kind.as_str()), Some("Deployment"));
    assert_eq!(b.severity(), pb::Severity::Warning);
    assert_eq!(b.firing_time_unix_ms, 1_000, "missing startsAt falls back to the received time");
    let c = &signals[2];
    assert_eq!(c.status(), pb::SignalStatus::Resolved);
    assert_eq!(c.namespace, "default");
    assert_eq!(c.resource.as_ref().map(|r| (r.kind.as_str(), r.name.as_str())), Some(("Node", "n1")));
}

#[test]
fn original_payload_is_the_alert_itself() {
    let s = parse_json(json!({"alerts": [{"labels": {"alertname": "A"}, "annotations": {"summary": "x"}}]})).unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&s[0].original_payload).unwrap();
    assert_eq!(raw, json!({"labels": {"alertname": "A"}, "annotations": {"summary": "x"}}));
}

#[test]
fn resource_precedence_and_defaults() {
    let s = parse_json(json!({"alerts": [
        {"labels": {"alertname": "A", "service": "s", "pod": "p"}},
        {"labels": {"alertname": "A", "exported_namespace": "ex"}}
    ]}))
    .unwrap();
    assert_eq!(s[0].resource.as_ref().map(|r| r.kind.as_str()), Some("Pod"));
    assert_eq!(s[1].namespace, "ex");
    assert_eq!(s[1].resource.as_ref().map(|r| (r.kind.as_str(), r.name.as_str())), Some(("Unknown", "unknown")));
}

#[test]
fn malformed_timestamp_falls_back_to_received_time() {
    let s = parse_json(json!({"alerts": [{"labels": {"alertname": "A"}, "startsAt": "yesterday"}]})).unwrap();
    assert_eq!(s[0].firing_time_unix_ms, 1_000);
}

#[test]
fn invalid_payloads_are_rejected_with_a_reason() {
    assert!(parse(b"{not json", 0, &FingerprintRule::Resource).is_err());
    assert!(parse(b"", 0, &FingerprintRule::Resource).is_err());
    assert!(parse(b"null", 0, &FingerprintRule::Resource).is_err());
    assert!(parse(b"{\"alerts\":[]}\0", 0, &FingerprintRule::Resource).is_err());
    assert_eq!(bad_request(json!({"status": "firing"})), "missing alerts array");
    assert_eq!(bad_request(json!({"alerts": []})), "no alerts in webhook payload");
    assert_eq!(
        bad_request(json!({"alerts": [{"labels": {"severity": "x"}}]})),
        "alerts[0]: labels.alertname is required"
    );
    assert!(bad_request(json!({"alerts": [42]})).starts_with("alerts[0] is not a valid alert"));
    assert!(bad_request(json!({"alerts": [{"labels": "nope"}]})).starts_with("alerts[0] is not a valid alert"));
    assert!(
        bad_request(json!({"alerts": [{"labels": {"alertname": "A"}, "status": "pending"}]})).contains("\"pending\"")
    );
}

#[test]
fn a_bad_alert_anywhere_rejects_the_whole_batch() {
    let r = parse_json(json!({"alerts": [{"labels": {"alertname": "A"}}, {"labels": {}}]}));
    assert!(matches!(r, Err(EdgeError::BadRequest(d)) if d.starts_with("alerts[1]")));
}

fn deliveries(v: serde_json::Value) -> Vec<Option<String>> {
    parse(v.to_string().as_bytes(), 1_000, &FingerprintRule::Resource)
        .unwrap()
        .into_iter()
        .map(|i| i.delivery)
        .collect()
}

#[test]
fn a_notification_identifies_each_alerts_delivery() {
    let alert = |status: &str, starts: &str| json!({"status": status, "labels": {"alertname": "A", "pod": "p1"}, "startsAt": starts, "fingerprint": "c0ffee"});
    let notification = |group: &str, alerts: Vec<serde_json::Value>| json!({"receiver": "breakwater", "groupKey": group, "alerts": alerts});
    let t0 = "2026-12-01T06:00:00Z";
    let first = deliveries(notification("{}:{}", vec![alert("firing", t0), alert("firing", t0)]));
    // Identical alerts of one notification are one delivery; every copy of it carries the same key.
    assert!(first[0].as_ref().is_some_and(|k| k.len() == 32));
    assert_eq!(first[0], first[1]);
    assert_eq!(first, deliveries(notification("{}:{}", vec![alert("firing", t0), alert("firing", t0)])));
    // Another group, status or start is another delivery.
    let other = |n| deliveries(n)[0].clone();
    assert_ne!(first[0], other(notification("{}:{x}", vec![alert("firing", t0)])));
    assert_ne!(first[0], other(notification("{}:{}", vec![alert("resolved", t0)])));
    assert_ne!(first[0], other(notification("{}:{}", vec![alert("firing", "2026-12-01T06:05:00Z")])));
    // Without a groupKey the payload is not Alertmanager's: no delivery identity.
    assert_eq!(deliveries(json!({"alerts": [alert("firing", t0)]})), [None]);
    assert_eq!(deliveries(json!({"groupKey": "", "alerts": [alert("firing", t0)]})), [None]);
}

#[test]
fn long_values_are_cut_to_their_caps_and_listed() {
    let caps = Caps { label_value_bytes: 100, annotation_value_bytes: 200, expanded_bytes: 1 << 20 };
    let body = json!({
        "commonAnnotations": {"runbook": "r".repeat(1000)},
        "alerts": [{"labels": {"alertname": "A", "blob": "é".repeat(100)}, "annotations": {"short": "ok"}}]
    })
    .to_string();
    let signals = read(body.as_bytes(), &caps).unwrap().signals(1, &FingerprintRule::Resource).unwrap();
    let s = &signals[0].signal;
    // 100 bytes fall inside a 2-byte character: the cut moves back to its start.
    assert_eq!(s.labels["blob"].len(), 100);
    assert_eq!(s.annotations["runbook"].len(), 200);
    assert_eq!(s.annotations["short"], "ok");
    assert_eq!(s.annotations[crate::adapters::TRUNCATED_ANNOTATION], "annotations.runbook,labels.blob");
    let untouched = parse_json(json!({"alerts": [{"labels": {"alertname": "A"}}]})).unwrap();
    assert!(!untouched[0].annotations.contains_key(crate::adapters::TRUNCATED_ANNOTATION));
}

#[test]
fn a_webhook_that_would_expand_past_its_cap_is_refused_before_expanding() {
    // The issue's case: 1,000 empty alerts sharing one 400 KB annotation.
    let alerts = vec![json!({"labels": {}}); 1000];
    let body = json!({"commonLabels": {"alertname": "A"}, "commonAnnotations": {"big": "b".repeat(400_000)}, "alerts": alerts})
        .to_string();
    match read(body.as_bytes(), &Caps::default()) {
        Err(EdgeError::ExpansionTooLarge { limit }) => assert_eq!(limit, 8 * 1024 * 1024),
        Err(e) => panic!("expected 413, got {e:?}"),
        Ok(p) => panic!("expected 413, got {} bytes", p.expanded_bytes()),
    }
    // 1,000 alerts sharing 4 KB fit, and the estimate covers what they take.
    let alerts = vec![json!({"labels": {}}); 1000];
    let body =
        json!({"commonLabels": {"alertname": "A"}, "commonAnnotations": {"big": "b".repeat(4000)}, "alerts": alerts})
            .to_string();
    let parsed = read(body.as_bytes(), &Caps::default()).unwrap();
    let estimate = parsed.expanded_bytes();
    let signals = parsed.signals(1, &FingerprintRule::Resource).unwrap();
    let actual: usize = signals
        .iter()
        .map(|i| {
            let s = &i.signal;
            s.labels.iter().chain(&s.annotations).map(|(k, v)| k.len() + v.len()).sum::<usize>()
                + s.original_payload.len()
        })
        .sum();
    assert!(actual <= estimate && estimate < actual + 1000 * 300, "estimate {estimate}, actual {actual}");
}
