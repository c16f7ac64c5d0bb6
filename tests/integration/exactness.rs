//! An answer is the truth, whatever the sender repeats: a delivery counts once
//! however often it is retried or copied, a permanent problem with one alert
//! is reported in its result (2xx for the rest), and a webhook that fits the
//! body limit never fails on an internal limit. Each test checks the
//! invariant `accounted == accepted` (alerts answered 2xx, less those reported
//! as copies or rejected) and one CR per incident.

use std::time::Duration;

use breakwater_testkit::{Fault, Verb, assert_eventually};
use breakwater_tests::{Alert, Backend, TestGateway, accounted_alerts, notification, webhook};
use serde_json::{Value, json};

/// Alerts the answers say were counted: every result but copies, rejections and resolutions.
fn counted(answer: &Value) -> u64 {
    answer["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .filter(|r| {
                    !matches!(
                        r["outcome"].as_str(),
                        Some("duplicate_delivery" | "rejected" | "resolved" | "resolved_unknown")
                    )
                })
                .count() as u64
        })
        .unwrap_or(0)
}

fn outcomes(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .map(|rs| rs.iter().map(|r| r["outcome"].as_str().unwrap_or("?").to_owned()).collect())
        .unwrap_or_default()
}

async fn settles_at(gw: &TestGateway, accepted: u64, crs: usize) {
    // Generous: the machine may be busy with other tests; a pass takes well under a second.
    assert_eventually!(
        Duration::from_secs(30),
        async { accounted_alerts(&gw.remediations()) == accepted },
        "accounted reaches {accepted}: {}",
        accounted_alerts(&gw.remediations())
    );
    assert_eq!(gw.remediations().len(), crs, "{:#?}", gw.remediations());
}

/// A namespace that can never hold a CR is that alert's problem: it is reported
/// in its result with the reason, nothing is recorded for it, and the rest of
/// the webhook is counted. Retrying cannot help, so the answer is 2xx.
async fn a_namespace_that_can_never_hold_a_cr_is_rejected_alone(backend: Backend) {
    let mut gw = TestGateway::start(backend).await;
    let long = "a".repeat(300);
    let body = webhook(&[
        Alert::firing("HighMemory").in_ns("BadNS").pod("api-1"),
        Alert::firing("HighMemory").in_ns("prod").pod("api-1"),
        Alert::firing("HighMemory").in_ns(&long).pod("api-1"),
        Alert::firing("HighMemory").in_ns("../../etc").pod("api-1"),
    ]);
    let (status, answer) = gw.post_prometheus(&body).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(outcomes(&answer), ["rejected", "created", "rejected", "rejected"]);
    for i in [0, 2, 3] {
        let result = &answer["results"][i];
        assert_eq!(result["index"], i);
        assert!(result["reason"].as_str().is_some_and(|r| r.contains("DNS-1123")), "{result}");
        assert!(result.get("remediationRequestName").is_none(), "{result}");
        // The answer never echoes a huge value back.
        assert!(result["reason"].as_str().is_some_and(|r| r.len() < 300), "{result}");
    }
    // The sender's retry of the same webhook counts the valid alert again, and only it.
    let (status, again) = gw.post_prometheus(&body).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(outcomes(&again), ["rejected", "duplicate", "rejected", "rejected"]);
    // A webhook of nothing but such alerts is answered 2xx too, and leaves nothing behind.
    let (status, none) = gw.post_prometheus(&webhook(&[Alert::firing("X").in_ns("Bad_NS")])).await;
    assert_eq!(status, 200, "{none}");
    assert_eq!(none["status"], "rejected");
    settles_at(&gw, counted(&answer) + counted(&again) + counted(&none), 1).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_namespace_that_can_never_hold_a_cr_is_rejected_alone_embedded() {
    a_namespace_that_can_never_hold_a_cr_is_rejected_alone(Backend::Embedded).await;
}

#[tokio::test]
async fn a_namespace_that_can_never_hold_a_cr_is_rejected_alone_redis_and_kube() {
    a_namespace_that_can_never_hold_a_cr_is_rejected_alone(Backend::RedisAndKube).await;
}

/// One Alertmanager notification delivered three times (a retry after a lost
/// answer, a second HA peer) counts once; the copies are answered 2xx with the
/// CR that holds them, so no peer retries. A new alert of the same group in
/// the next notification still counts.
async fn copies_of_a_notification_count_once(backend: Backend) {
    let mut gw = TestGateway::start(backend).await;
    let alerts = [
        Alert::firing("HighMemory").in_ns("prod").pod("api-1"),
        Alert::firing("HighMemory").in_ns("prod").pod("api-2"),
    ];
    let body = notification("{}:{alertname=\"HighMemory\"}", &alerts);
    let (status, first) = gw.post_prometheus(&body).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(outcomes(&first), ["created", "created"]);
    let mut accepted = counted(&first);
    let api_requests = gw.fake_api.as_ref().map(|api| api.request_log().len());
    for _ in 0..2 {
        let (status, copy) = gw.post_prometheus(&body).await;
        assert_eq!(status, 202, "{copy}");
        assert_eq!(outcomes(&copy), ["duplicate_delivery", "duplicate_delivery"]);
        for i in 0..2 {
            assert_eq!(copy["results"][i]["remediationRequestName"], first["results"][i]["remediationRequestName"]);
            assert_eq!(copy["results"][i]["occurrenceCount"], 1);
        }
        accepted += counted(&copy);
    }
    // This edge answered the first delivery 2xx, so its copies have nothing to complete: no
    // Kubernetes call at all.
    assert_eq!(gw.fake_api.as_ref().map(|api| api.request_log().len()), api_requests, "copies cost no write");
    // The next notification of the group: api-1 again (with a new startsAt: it fired again) counts.
    let mut next = notification("{}:{alertname=\"HighMemory\"}", &alerts[..1]);
    next["alerts"][0]["startsAt"] = json!("2026-12-01T06:05:00Z");
    let (status, later) = gw.post_prometheus(&next).await;
    assert_eq!(status, 202, "{later}");
    assert_eq!(outcomes(&later), ["duplicate"]);
    accepted += counted(&later);
    assert_eq!(accepted, 3);
    settles_at(&gw, accepted, 2).await;
    gw.stop().await;
}

#[tokio::test]
async fn copies_of_a_notification_count_once_embedded() {
    copies_of_a_notification_count_once(Backend::Embedded).await;
}

#[tokio::test]
async fn copies_of_a_notification_count_once_redis_and_kube() {
    copies_of_a_notification_count_once(Backend::RedisAndKube).await;
}

/// A notification answered 503 because its CR could not be written was counted
/// by dedup all the same; Alertmanager's retry is recognised as a copy, adds
/// nothing, and completes the half-done delivery: the CR is created with the
/// count of one. Before, the retry answered `duplicate, occurrenceCount 2`.
#[tokio::test]
async fn a_retry_after_a_503_completes_the_delivery_and_counts_once() {
    let mut gw = TestGateway::start(Backend::RedisAndKube).await;
    let api = gw.fake_api.as_ref().expect("fake API server");
    api.inject_for(Verb::Create, Fault::Status { code: 503, retry_after_secs: None }, 100);
    let body = notification("{}:{alertname=\"PodCrash\"}", &[Alert::firing("PodCrash").in_ns("prod").pod("api-1")]);
    let (status, failed) = gw.post_prometheus(&body).await;
    assert_eq!(status, 503, "{failed}");
    api.clear_faults();
    let (status, retry) = gw.post_prometheus(&body).await;
    assert_eq!(status, 202, "{retry}");
    assert_eq!(outcomes(&retry), ["duplicate_delivery"]);
    assert_eq!(retry["results"][0]["occurrenceCount"], 1);
    let name = retry["results"][0]["remediationRequestName"].as_str().expect("the CR is named").to_owned();
    assert!(gw.remediation("prod", &name).is_some(), "the retry created the CR before answering");
    // Retried again: still one.
    let (status, _) = gw.post_prometheus(&body).await;
    assert_eq!(status, 202);
    settles_at(&gw, 1, 1).await;
    gw.stop().await;
}

/// Twenty thousand alerts in one small webhook (80 KB: the common labels make
/// each alert) pass every internal limit: before, the message to a component
/// went over gRPC's 4 MiB default and the webhook got 503.
async fn twenty_thousand_alerts_in_one_webhook(backend: Backend) {
    // Two such webhooks at once are more than one sender's default burst. A batch this size
    // takes a debug build on a loaded machine more than the default 2 s per component call,
    // 10 s per request and 1 s to get a Redis connection (storm then degrades and the 15,000
    // pods become 15,000 CRs); this test is about size limits, not deadlines.
    let mut gw = TestGateway::start_with(backend, |c| {
        c.ratelimit.burst = 100_000;
        c.edge.component_timeout_ms = 20_000;
        c.edge.request_timeout_ms = 60_000;
        for redis in [&mut c.dedup.redis, &mut c.storm.redis, &mut c.ratelimit.redis] {
            redis.connect_timeout_ms = 10_000;
        }
    })
    .await;
    let mut body = webhook(&[]);
    body["commonLabels"] = json!({"alertname": "Flood", "namespace": "prod", "pod": "api-1"});
    body["alerts"] = Value::Array(vec![json!({}); 20_000]);
    let (status, answer) = gw.post_prometheus(&body).await;
    assert_eq!(status, 201, "{}", if status == 201 { answer["message"].clone() } else { answer.clone() });
    assert_eq!(counted(&answer), 20_000);
    // One incident counting every alert.
    settles_at(&gw, 20_000, 1).await;

    // The same as one Alertmanager notification: identical alerts are copies of one delivery.
    body["groupKey"] = json!("{}:{alertname=\"Flood2\"}");
    body["commonLabels"]["alertname"] = json!("Flood2");
    let (status, answer) = gw.post_prometheus(&body).await;
    assert_eq!(status, 201, "{}", if status == 201 { answer["message"].clone() } else { answer.clone() });
    assert_eq!(counted(&answer), 1);
    settles_at(&gw, 20_001, 2).await;
    // Its retry is 20,000 copies: nothing more is counted, and it costs one write at most.
    let (status, answer) = gw.post_prometheus(&body).await;
    assert_eq!(status, 202, "{}", answer["message"]);
    assert_eq!(counted(&answer), 0);

    // 15,000 distinct pods of one alertname (as much as fits the body limit): five CRs and one
    // storm counting the rest.
    body.as_object_mut().map(|b| b.remove("groupKey"));
    body["commonLabels"] = json!({"alertname": "Flood3", "namespace": "prod"});
    body["alerts"] = (0..15_000).map(|i| json!({"labels": {"pod": format!("p{i}")}})).collect();
    let (status, answer) = gw.post_prometheus(&body).await;
    assert_eq!(status, 201, "{}", if status == 201 { answer["message"].clone() } else { answer.clone() });
    assert_eq!(counted(&answer), 15_000);
    settles_at(&gw, 35_001, 2 + 5 + 1).await;
    gw.stop().await;
}

#[tokio::test]
async fn twenty_thousand_alerts_in_one_webhook_embedded() {
    twenty_thousand_alerts_in_one_webhook(Backend::Embedded).await;
}

#[tokio::test]
async fn twenty_thousand_alerts_in_one_webhook_redis_and_kube() {
    twenty_thousand_alerts_in_one_webhook(Backend::RedisAndKube).await;
}

/// The same Kubernetes Event object (same uid and count) delivered twice counts
/// once; its next count is a new occurrence.
#[tokio::test]
async fn a_kubernetes_event_delivered_twice_counts_once() {
    let mut gw = TestGateway::start(Backend::Embedded).await;
    let event = |count: u64| {
        json!({
            "metadata": {"uid": "6b1d0c5e-0000-4000-8000-000000000001", "namespace": "prod"},
            "type": "Warning", "reason": "OOMKilled", "message": "container killed", "count": count,
            "involvedObject": {"kind": "Pod", "namespace": "prod", "name": "api-1"},
        })
    };
    let path = "/api/v1/signals/kubernetes-event";
    let (status, first) = gw.post(path, &event(1)).await;
    assert_eq!(status, 201, "{first}");
    let (status, copy) = gw.post(path, &event(1)).await;
    assert_eq!(status, 202, "{copy}");
    assert_eq!(outcomes(&copy), ["duplicate_delivery"]);
    let (status, next) = gw.post(path, &event(2)).await;
    assert_eq!(status, 202, "{next}");
    assert_eq!(outcomes(&next), ["duplicate"]);
    assert_eq!(next["results"][0]["occurrenceCount"], 2);
    settles_at(&gw, 2, 1).await;
    gw.stop().await;
}

/// A storm's webhook answered 503 (its CRs could not be written) left its counts in dedup
/// and storm; Alertmanager's retry is all copies: it creates what is missing with those
/// counts and adds nothing, so each alert is counted once. Before, the storm counter kept
/// the failed attempt's alerts and the retry counted them again.
#[tokio::test]
async fn a_storm_answered_503_then_retried_counts_each_alert_once() {
    let mut gw = TestGateway::start(Backend::RedisAndKube).await;
    let api = gw.fake_api.as_ref().expect("fake API server");
    api.inject_for(Verb::Create, Fault::Status { code: 503, retry_after_secs: None }, 1_000);
    let pods: Vec<Alert> = (0..50).map(|p| Alert::firing("PodCrash").in_ns("prod").pod(&format!("web-{p}"))).collect();
    let body = notification("{}:{alertname=\"PodCrash\"}", &pods);
    let (status, failed) = gw.post_prometheus(&body).await;
    assert_eq!(status, 503, "{failed}");
    api.clear_faults();
    let (status, retry) = gw.post_prometheus(&body).await;
    assert_eq!(status, 202, "{retry}");
    assert!(outcomes(&retry).iter().all(|o| o == "duplicate_delivery"), "{retry}");
    // Five incidents' own CRs and one storm CR counting the other 45.
    settles_at(&gw, 50, 6).await;
    let (status, _) = gw.post_prometheus(&body).await;
    assert_eq!(status, 202);
    settles_at(&gw, 50, 6).await;
    gw.stop().await;
}
