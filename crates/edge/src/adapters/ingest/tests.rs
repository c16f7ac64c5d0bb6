use std::collections::HashMap;

use super::*;
use crate::adapters::prometheus;

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn submitted(pairs: &[(&str, &str)]) -> pb::SubmittedSignal {
    pb::SubmittedSignal { labels: labels(pairs), ..Default::default() }
}

fn read(signals: Vec<pb::SubmittedSignal>) -> Vec<Result<Incoming, InvalidAlert>> {
    let namespace_labels = prometheus::DEFAULT_NAMESPACE_LABELS.map(str::to_owned);
    super::signals(
        pb::SubmitSignalsRequest { signals },
        1_000,
        &FingerprintRule::Resource,
        &Caps::default(),
        &namespace_labels,
    )
}

#[test]
fn a_submitted_alert_is_the_signal_the_same_webhook_alert_makes() {
    let pairs = [("alertname", "HighMemory"), ("namespace", "prod"), ("pod", "api-1"), ("severity", "critical")];
    let over_grpc = read(vec![submitted(&pairs)]).remove(0).unwrap().signal;
    let body = serde_json::json!({"alerts": [{"labels": labels(&pairs)}]}).to_string();
    let over_http = prometheus::parse(body.as_bytes(), 1_000, &FingerprintRule::Resource)
        .unwrap()
        .incoming
        .remove(0)
        .unwrap()
        .signal;
    assert_eq!(over_grpc.fingerprint, over_http.fingerprint);
    assert_eq!(over_grpc.namespace, "prod");
    assert_eq!(over_grpc.resource, over_http.resource);
    assert_eq!(over_grpc.severity(), pb::Severity::Critical);
    assert_eq!(over_grpc.source_type, SOURCE_TYPE);
    assert_eq!(over_grpc.source, "grpc");
    let payload: serde_json::Value = serde_json::from_slice(&over_grpc.original_payload).unwrap();
    assert_eq!(payload["labels"]["pod"], "api-1");
    assert_eq!(payload["status"], "firing");
}

#[test]
fn a_caller_may_name_the_fingerprint_the_resource_and_the_source() {
    let fingerprint = "ab".repeat(32);
    let named = pb::SubmittedSignal {
        fingerprint: fingerprint.clone(),
        source: "slo-checker".into(),
        starts_at_unix_ms: 500,
        status: pb::SignalStatus::Resolved.into(),
        ..submitted(&[("alertname", "A")])
    };
    let resource = pb::Resource { kind: "Deployment".into(), name: "api".into(), namespace: "shop".into() };
    let placed =
        pb::SubmittedSignal { resource: Some(resource.clone()), ..submitted(&[("alertname", "A"), ("pod", "p")]) };
    let read = read(vec![named, placed]);
    let named = &read[0].as_ref().unwrap().signal;
    assert_eq!(named.fingerprint, fingerprint);
    assert_eq!(named.source, "slo-checker");
    assert_eq!(named.firing_time_unix_ms, 500);
    assert_eq!(named.status(), pb::SignalStatus::Resolved);
    let placed = &read[1].as_ref().unwrap().signal;
    assert_eq!(placed.namespace, "shop", "the resource's namespace is the signal's");
    assert_eq!(placed.resource.as_ref(), Some(&resource));
    assert_eq!(placed.fingerprint, breakwater_signal::fingerprint_of(&["A", "shop", "Deployment", "api"]));
}

#[test]
fn a_signal_that_cannot_be_one_is_rejected_with_its_reason_and_the_rest_go_on() {
    let read = read(vec![
        submitted(&[("namespace", "prod")]),
        pb::SubmittedSignal { fingerprint: "XYZ".into(), ..submitted(&[("alertname", "A")]) },
        pb::SubmittedSignal { source: "s".repeat(64), ..submitted(&[("alertname", "A")]) },
        pb::SubmittedSignal { delivery_id: "d".repeat(129), ..submitted(&[("alertname", "A")]) },
        pb::SubmittedSignal {
            resource: Some(pb::Resource { kind: String::new(), name: "n".into(), namespace: String::new() }),
            ..submitted(&[("alertname", "A")])
        },
        pb::SubmittedSignal {
            resource: Some(pb::Resource { kind: "Pod".into(), name: "n".into(), namespace: "Bad_NS".into() }),
            ..submitted(&[("alertname", "A")])
        },
        submitted(&[("alertname", "Fine")]),
    ]);
    let reasons: Vec<String> =
        read.iter().map(|r| r.as_ref().err().map(|e| e.reason.clone()).unwrap_or_default()).collect();
    assert_eq!(reasons[0], "signals[0]: labels.alertname is required");
    assert!(reasons[1].contains("fingerprint must be 64 lower-case hex"), "{reasons:?}");
    assert!(reasons[2].contains("source is longer than 63"), "{reasons:?}");
    assert!(reasons[3].contains("delivery_id is longer than 128"), "{reasons:?}");
    assert!(reasons[4].contains("resource.kind"), "{reasons:?}");
    assert!(reasons[5].contains("resource.namespace"), "{reasons:?}");
    assert_eq!(read[1].as_ref().err().map(|e| e.alert_name.as_str()), Some("A"));
    assert!(read[6].is_ok());
}

#[test]
fn a_delivery_id_makes_a_retry_a_copy() {
    let with_id = |id: &str, status: pb::SignalStatus| pb::SubmittedSignal {
        delivery_id: id.into(),
        status: status.into(),
        ..submitted(&[("alertname", "A"), ("pod", "p")])
    };
    let keys: Vec<Option<String>> = read(vec![
        with_id("1b4e28ba", pb::SignalStatus::Firing),
        with_id("1b4e28ba", pb::SignalStatus::Firing),
        with_id("1b4e28ba", pb::SignalStatus::Resolved),
        with_id("other", pb::SignalStatus::Firing),
        with_id("", pb::SignalStatus::Firing),
    ])
    .into_iter()
    .map(|r| r.unwrap().delivery)
    .collect();
    assert!(keys[0].is_some());
    assert_eq!(keys[0], keys[1]);
    assert_ne!(keys[0], keys[2]);
    assert_ne!(keys[0], keys[3]);
    assert_eq!(keys[4], None);
}

#[test]
fn values_are_cut_to_their_caps_and_the_reservation_covers_the_signals() {
    let big = pb::SubmittedSignal {
        annotations: labels(&[("runbook", &"r".repeat(100_000))]),
        ..submitted(&[("alertname", "A"), ("blob", &"b".repeat(10_000))])
    };
    let request = pb::SubmitSignalsRequest { signals: vec![big.clone()] };
    assert!(expanded_bytes(&request) >= 2 * 110_000);
    let signal = read(vec![big]).remove(0).unwrap().signal;
    assert_eq!(signal.labels["blob"].len(), 4096);
    assert_eq!(signal.annotations["runbook"].len(), 32 * 1024);
    assert_eq!(signal.annotations[crate::adapters::TRUNCATED_ANNOTATION], "annotations.runbook,labels.blob");
}
