use std::net::Ipv4Addr;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use serde_json::json;

use super::Alertmanager;
use crate::recorder::WebhookRecorder;

/// A webhook target that accepts everything with 200 and a small JSON body.
async fn start_webhook_target() -> String {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind target");
    let addr = listener.local_addr().expect("target address");
    let app = Router::new().route("/hook", post(|| async { axum::Json(json!({ "accepted": true })) }));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("target serves") });
    format!("http://{addr}")
}

#[tokio::test]
async fn delivers_firing_and_resolved_notifications_to_the_webhook() {
    let recorder = WebhookRecorder::start(&start_webhook_target().await).await;
    let alertmanager = Alertmanager::start(&format!("{}/hook", recorder.url())).await;
    alertmanager
        .post_alerts(&json!([{
            "labels": { "alertname": "KubePodCrashLooping", "namespace": "prod" },
            "annotations": { "summary": "pod crash looping" },
            "generatorURL": "http://prometheus.example/graph",
        }]))
        .await;

    let exchanges = recorder.wait_for(1, Duration::from_secs(10)).await;
    let delivery = &exchanges[0];
    assert_eq!(delivery.path, "/hook");
    assert_eq!(delivery.status, 200);
    assert_eq!(delivery.response_body, json!({ "accepted": true }));
    assert_eq!(delivery.request_headers["content-type"], "application/json");
    assert_eq!(delivery.request_body["version"], "4");
    assert_eq!(delivery.request_body["status"], "firing");
    assert_eq!(delivery.request_body["alerts"][0]["labels"]["alertname"], "KubePodCrashLooping");

    let now = jiff::Timestamp::now();
    alertmanager
        .post_alerts(&json!([{
            "labels": { "alertname": "KubePodCrashLooping", "namespace": "prod" },
            "annotations": { "summary": "pod crash looping" },
            "startsAt": (now - jiff::SignedDuration::from_secs(60)).to_string(),
            "endsAt": (now - jiff::SignedDuration::from_secs(1)).to_string(),
        }]))
        .await;
    let exchanges = recorder.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(exchanges[1].request_body["status"], "resolved", "{:?}", exchanges[1].request_body);
}

#[tokio::test]
async fn repeat_interval_resends_unchanged_groups() {
    let recorder = WebhookRecorder::start(&start_webhook_target().await).await;
    let alertmanager = Alertmanager::builder(&format!("{}/hook", recorder.url())).repeat_interval("2s").start().await;
    alertmanager.post_alerts(&json!([{ "labels": { "alertname": "Repeat" }, "annotations": {} }])).await;
    let exchanges = recorder.wait_for(2, Duration::from_secs(15)).await;
    assert!(exchanges.iter().all(|e| e.request_body["status"] == "firing"));
}

#[tokio::test]
async fn config_uses_json_quoting_and_the_requested_grouping() {
    let builder = Alertmanager::builder("http://127.0.0.1:1/a?b=c d").group_by(&["alertname", "namespace"]);
    let yaml = builder.config_yaml("webhook-x");
    assert!(yaml.contains("group_by: [\"alertname\", \"namespace\"]"), "{yaml}");
    assert!(yaml.contains("url: \"http://127.0.0.1:1/a?b=c d\""), "{yaml}");
    assert!(yaml.contains("send_resolved: true"), "{yaml}");
    assert!(yaml.contains("repeat_interval: \"1h\""), "{yaml}");
}

#[tokio::test]
#[should_panic(expected = "answered 422 Unprocessable Entity")]
async fn rejected_alerts_fail_loudly() {
    let alertmanager = Alertmanager::start("http://127.0.0.1:1/hook").await;
    alertmanager.post_alerts(&json!([{ "annotations": {} }])).await;
}
