use super::*;
use breakwater_signal::fingerprint_of;
use serde_json::json;

fn parse_json(v: serde_json::Value) -> Result<Vec<pb::Signal>, EdgeError> {
    parse(v.to_string().as_bytes(), 1_000, &FingerprintRule::Resource)
        .map(|read| read.incoming.into_iter().map(|r| r.expect("every alert is valid").signal).collect())
}

/// Each alert's reason for not being a signal, `None` for those that are.
fn invalid(v: serde_json::Value) -> Vec<Option<InvalidAlert>> {
    parse(v.to_string().as_bytes(), 1_000, &FingerprintRule::Resource)
        .expect("a webhook")
        .incoming
        .into_iter()
        .map(Result::err)
        .collect()
}

fn namespace_labels() -> Vec<String> {
    DEFAULT_NAMESPACE_LABELS.map(str::to_owned).to_vec()
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
    // A common label is the batch's, held once, not copied into each signal.
    assert!(!a.labels.contains_key("team"));
    assert_eq!(a.source_type, SOURCE_TYPE);
    let b = &signals[1];
    assert_eq!(b.resource.as_ref().map(|r| r.kind.as_str()), Some("Deployment"));
    assert_eq!(b.severity(), pb::Severity::Warning);
    assert_eq!(b.firing_time_unix_ms, 1_000, "missing startsAt falls back to the received time");
    let c = &signals[2];
    assert_eq!(c.status(), pb::SignalStatus::Resolved);
    assert_eq!(c.namespace, "", "no namespace label: the edge places it in its fallback namespace");
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
    assert!(bad_request(json!({"alerts": "nope"})).starts_with("malformed JSON payload"));
    assert!(bad_request(json!({"commonLabels": [1], "alerts": [{}]})).starts_with("malformed JSON payload"));
}

#[test]
fn a_bad_alert_is_set_aside_with_its_reason_and_the_rest_of_the_batch_goes_on() {
    let read = invalid(json!({"alerts": [
        {"labels": {"alertname": "A"}},
        {"labels": {"severity": "x"}},
        42,
        {"labels": "nope"},
        {"labels": {"alertname": "P", "x": 1}},
        {"labels": {"alertname": "S"}, "status": "pending"},
        {"labels": {"alertname": "B"}, "status": "resolved"}
    ]}));
    assert_eq!(read.len(), 7);
    assert!(read[0].is_none() && read[6].is_none(), "the valid alerts are signals");
    let reason = |i: usize| read[i].as_ref().map(|r| (r.alert_name.as_str(), r.reason.as_str()));
    assert_eq!(reason(1), Some(("", "alerts[1]: labels.alertname is required")));
    assert!(reason(2).is_some_and(|(name, r)| name.is_empty() && r.starts_with("alerts[2] is not a valid alert")));
    assert!(reason(3).is_some_and(|(_, r)| r.starts_with("alerts[3] is not a valid alert")));
    // An alert that is not valid is still named in its result when its alertname can be read.
    assert!(reason(4).is_some_and(|(name, r)| name == "P" && r.starts_with("alerts[4] is not a valid alert")));
    assert!(reason(5).is_some_and(|(name, r)| name == "S" && r.contains("\"pending\"")));
}

#[test]
fn the_namespace_comes_from_the_first_configured_label_present() {
    let body = json!({"alerts": [
        {"labels": {"alertname": "KubePodCrashLooping", "namespace": "monitoring", "exported_namespace": "shop", "pod": "p"}},
        {"labels": {"alertname": "A", "namespace": "", "exported_namespace": "shop"}},
        {"labels": {"alertname": "A", "namespace": "monitoring"}}
    ]})
    .to_string();
    let namespaces = |labels: &[&str]| -> Vec<String> {
        let labels: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        read(body.as_bytes(), &Caps::default())
            .unwrap()
            .signals(1, &FingerprintRule::Resource, &labels)
            .incoming
            .into_iter()
            .map(|r| r.unwrap().signal.namespace)
            .collect()
    };
    // The default, the reference gateway's: the exporter's namespace first.
    assert_eq!(namespaces(&["namespace", "exported_namespace"]), ["monitoring", "shop", "monitoring"]);
    // kube-state-metrics alerts: the subject's namespace first.
    assert_eq!(namespaces(&["exported_namespace", "namespace"]), ["shop", "shop", "monitoring"]);
    assert_eq!(namespaces(&["exported_namespace"]), ["shop", "shop", ""]);
}

fn deliveries(v: serde_json::Value) -> Vec<Option<String>> {
    parse(v.to_string().as_bytes(), 1_000, &FingerprintRule::Resource)
        .unwrap()
        .incoming
        .into_iter()
        .map(|i| i.unwrap().delivery)
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
fn common_labels_are_shared_by_every_signal_and_an_alerts_own_win() {
    let body = json!({
        "commonLabels": {"alertname": "A", "namespace": "prod", "severity": "critical", "team": "db"},
        "commonAnnotations": {"runbook": "https://runbooks/a"},
        "alerts": [
            {"labels": {"pod": "p-1"}},
            {"labels": {"pod": "p-2", "severity": "info"}, "annotations": {"runbook": "own"}}
        ]
    })
    .to_string();
    let read = parse(body.as_bytes(), 1_000, &FingerprintRule::Resource).unwrap();
    assert_eq!(read.shared.labels["team"], "db");
    assert_eq!(read.shared.annotations["runbook"], "https://runbooks/a");
    let signals: Vec<pb::Signal> = read.incoming.into_iter().map(|r| r.unwrap().signal).collect();
    // Identity, namespace and severity read the common labels where the alert has none.
    assert_eq!(signals[0].fingerprint, fingerprint_of(&["A", "prod", "Pod", "p-1"]));
    assert_eq!((signals[0].alert_name.as_str(), signals[0].namespace.as_str()), ("A", "prod"));
    assert_eq!(signals[0].severity(), pb::Severity::Critical);
    assert_eq!(signals[1].severity(), pb::Severity::Info);
    // Each signal holds only its own.
    assert_eq!(signals[0].labels.len(), 1);
    assert!(signals[0].annotations.is_empty());
    assert_eq!(signals[1].annotations["runbook"], "own");
}

#[test]
fn long_values_are_cut_to_their_caps_and_listed() {
    let caps = Caps { label_value_bytes: 100, annotation_value_bytes: 200, expanded_bytes: 1 << 20 };
    let body = json!({
        "commonAnnotations": {"runbook": "r".repeat(1000)},
        "alerts": [{"labels": {"alertname": "A", "blob": "é".repeat(100)}, "annotations": {"short": "ok"}}]
    })
    .to_string();
    let read = read(body.as_bytes(), &caps).unwrap().signals(1, &FingerprintRule::Resource, &namespace_labels());
    assert_eq!(read.shared.annotations["runbook"].len(), 200);
    let s = &read.incoming[0].as_ref().unwrap().signal;
    // 100 bytes fall inside a 2-byte character: the cut moves back to its start.
    assert_eq!(s.labels["blob"].len(), 100);
    assert_eq!(s.annotations["short"], "ok");
    // The signal's marker lists the shared value cut too: its CR lists that value.
    assert_eq!(s.annotations[crate::adapters::TRUNCATED_ANNOTATION], "annotations.runbook,labels.blob");
    let untouched = parse_json(json!({"alerts": [{"labels": {"alertname": "A"}}]})).unwrap();
    assert!(!untouched[0].annotations.contains_key(crate::adapters::TRUNCATED_ANNOTATION));
}

#[test]
fn common_values_are_counted_once_and_a_webhook_past_its_cap_is_refused_before_expanding() {
    // The issue's case: 1,000 empty alerts sharing one 400 KB annotation. Cut to its cap and
    // held once, it takes about what the body does, not 1,000 copies of it.
    let alerts = vec![json!({"labels": {}}); 1000];
    let body = json!({"commonLabels": {"alertname": "A"}, "commonAnnotations": {"big": "b".repeat(400_000)}, "alerts": alerts})
        .to_string();
    let parsed = read(body.as_bytes(), &Caps::default()).unwrap();
    let estimate = parsed.expanded_bytes();
    assert!(estimate < 32 * 1024 + 1000 * 300, "{estimate} bytes");
    let read = parsed.signals(1, &FingerprintRule::Resource, &namespace_labels());
    let shared: usize = read.shared.labels.iter().chain(&read.shared.annotations).map(|(k, v)| k.len() + v.len()).sum();
    let own: usize = read
        .incoming
        .iter()
        .map(|i| {
            let s = &i.as_ref().unwrap().signal;
            s.labels.iter().chain(&s.annotations).map(|(k, v)| k.len() + v.len()).sum::<usize>()
                + s.original_payload.len()
        })
        .sum();
    assert!(shared + own <= estimate, "estimate {estimate}, actual {}", shared + own);
    // What is left to amplify: many tiny alerts, each a signal of its own.
    let alerts = vec![json!({}); 40_000];
    let body = json!({"commonLabels": {"alertname": "A"}, "alerts": alerts}).to_string();
    match read_webhook(body.as_bytes()) {
        Err(EdgeError::ExpansionTooLarge { limit }) => assert_eq!(limit, 8 * 1024 * 1024),
        Err(e) => panic!("expected 413, got {e:?}"),
        Ok(bytes) => panic!("expected 413, got {bytes} bytes"),
    }
}

fn read_webhook(body: &[u8]) -> Result<usize, EdgeError> {
    read(body, &Caps::default()).map(|p| p.expanded_bytes())
}
