//! The real Alertmanager as the webhook client (reference E2E 01/02, 11):
//! Alertmanager → recorder → edge → components → RemediationRequest.

use std::time::Duration;

use breakwater_testkit::{Alertmanager, WebhookRecorder, assert_eventually};
use breakwater_tests::{Backend, TestGateway, accounted_alerts};
use serde_json::json;

async fn alertmanager_delivery_creates_then_counts(backend: Backend) {
    // A re-notification counts as an occurrence once the copy window (shorter than the
    // repeat interval, as the README asks) has passed.
    let gw = TestGateway::start_with(backend, |c| c.dedup.copy_window_secs = 1).await;
    let recorder = WebhookRecorder::start(&gw.url).await;
    // Re-sends the unchanged group every ~2 s: the same alert again.
    let alertmanager = Alertmanager::builder(&format!("{}/api/v1/signals/prometheus", recorder.url()))
        .repeat_interval("2s")
        .start()
        .await;
    alertmanager
        .post_alerts(&json!([{
            "labels": {"alertname": "HighMemory", "namespace": "prod", "pod": "api-1", "severity": "critical", "environment": "production"},
            "annotations": {"summary": "api-1 is using 95% of its memory limit"},
            "generatorURL": "http://prometheus.local/graph"
        }]))
        .await;
    let exchanges = recorder.wait_for(2, Duration::from_secs(30)).await;
    drop(alertmanager);

    assert_eq!(exchanges[0].status, 201, "first delivery: {}", exchanges[0].response_body);
    let first = &exchanges[0].response_body["results"][0];
    assert_eq!(first["outcome"], "created");
    let name = first["remediationRequestName"].as_str().expect("CR name").to_owned();
    assert_eq!(exchanges[1].status, 202, "repeat delivery: {}", exchanges[1].response_body);
    let second = &exchanges[1].response_body["results"][0];
    assert_eq!(second["outcome"], "duplicate");
    assert_eq!(second["remediationRequestName"], name.as_str());
    assert_eq!(second["occurrenceCount"], 2);

    let cr = gw.remediation("prod", &name).expect("the CR exists");
    let spec = &cr["spec"];
    assert_eq!(spec["signalName"], "HighMemory");
    assert_eq!(spec["signalFingerprint"], first["fingerprint"]);
    assert_eq!(spec["severity"], "critical");
    assert_eq!(spec["environment"], "production");
    assert_eq!(spec["priority"], "P0");
    assert_eq!(spec["signalType"], "prometheus-alert");
    assert_eq!(spec["signalSource"], "prometheus");
    assert_eq!(spec["targetType"], "kubernetes");
    assert_eq!(spec["signalLabels"]["pod"], "api-1");
    assert_eq!(spec["signalAnnotations"]["summary"], "api-1 is using 95% of its memory limit");
    assert!(spec["firingTime"].as_str().is_some_and(|t| t.starts_with("20")), "{spec}");
    assert_eq!(cr["metadata"]["labels"]["kubernaut.io/severity"], "critical");

    // Every delivery Alertmanager made is counted on the one CR, exactly.
    let delivered = recorder.exchanges().iter().filter(|e| e.status == 201 || e.status == 202).count() as u64;
    assert_eventually!(
        Duration::from_secs(5),
        async {
            gw.remediation("prod", &name).is_some_and(|cr| cr["spec"]["deduplication"]["occurrenceCount"] == delivered)
        },
        "occurrenceCount reaches {delivered}: {:?}",
        gw.remediation("prod", &name).map(|cr| cr["spec"]["deduplication"].clone())
    );
    assert_eq!(gw.remediations().len(), 1);
    assert_eq!(accounted_alerts(&gw.remediations()), delivered);
}

#[tokio::test]
async fn alertmanager_delivery_creates_then_counts_embedded() {
    alertmanager_delivery_creates_then_counts(Backend::Embedded).await;
}

#[tokio::test]
async fn alertmanager_delivery_creates_then_counts_redis_and_kube() {
    alertmanager_delivery_creates_then_counts(Backend::RedisAndKube).await;
}

/// Alertmanager over its sender's rate for a while, then under it: every over-rate
/// notification is answered 503, which Alertmanager retries, so every alert it was sent ends
/// up counted once, on its own CR. With 429 it would have dropped them until `repeat_interval`.
#[tokio::test]
async fn alertmanager_over_its_rate_retries_until_every_alert_is_counted() {
    const ALERTS: u64 = 8;
    // Three signals at once, then one every 2 s: most notifications are refused at first.
    let gw = TestGateway::start_with(Backend::Embedded, |c| {
        c.ratelimit.burst = 3;
        c.ratelimit.signals_per_second = 0.5;
    })
    .await;
    let recorder = WebhookRecorder::start(&gw.url).await;
    // Each alert its own group: one notification per alert, all at once.
    let alertmanager = Alertmanager::builder(&format!("{}/api/v1/signals/prometheus", recorder.url()))
        .group_interval("30s")
        .start()
        .await;
    let alerts: Vec<serde_json::Value> = (0..ALERTS)
        .map(|i| json!({"labels": {"alertname": "Flood", "namespace": "prod", "pod": format!("api-{i}")}}))
        .collect();
    alertmanager.post_alerts(&serde_json::Value::Array(alerts)).await;

    assert_eventually!(
        Duration::from_secs(60),
        async { accounted_alerts(&gw.remediations()) == ALERTS },
        "every alert counted: {} of {ALERTS}; answers {:?}; Alertmanager log:\n{}",
        accounted_alerts(&gw.remediations()),
        recorder.exchanges().iter().map(|e| e.status).collect::<Vec<_>>(),
        alertmanager.log()
    );
    let statuses: Vec<u16> = recorder.exchanges().iter().map(|e| e.status).collect();
    assert!(statuses.contains(&503), "the sender was over its rate for a while: {statuses:?}");
    assert!(statuses.iter().all(|&s| (200..300).contains(&s) || s == 503), "{statuses:?}");
    let refused = recorder.exchanges().into_iter().find(|e| e.status == 503).expect("a refusal");
    assert_eq!(refused.response_body["type"], "https://kubernaut.io/errors/rate-limited");
    // Counted once each: the storm CR or one CR per pod, but never an alert twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(accounted_alerts(&gw.remediations()), ALERTS);
}
