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
    let dir = tempfile::tempdir().unwrap();
    let yaml = builder.config_yaml("webhook-x", dir.path());
    assert!(!yaml.contains("http_config"), "no token, no authorization: {yaml}");
    assert!(yaml.contains("group_by: [\"alertname\", \"namespace\"]"), "{yaml}");
    assert!(yaml.contains("url: \"http://127.0.0.1:1/a?b=c d\""), "{yaml}");
    assert!(yaml.contains("send_resolved: true"), "{yaml}");
    assert!(yaml.contains("repeat_interval: \"1h\""), "{yaml}");
}

#[test]
fn a_bearer_token_is_sent_from_a_credentials_file() {
    let dir = tempfile::tempdir().unwrap();
    let yaml =
        Alertmanager::builder("http://127.0.0.1:1/hook").bearer_token("s3cret").config_yaml("webhook-x", dir.path());
    let file = dir.path().join("webhook-token");
    assert!(yaml.contains("type: Bearer"), "{yaml}");
    assert!(yaml.contains(&format!("credentials_file: {:?}", file.to_str().unwrap())), "{yaml}");
    assert!(!yaml.contains("s3cret"), "the token is in the file only: {yaml}");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "s3cret");
}

#[tokio::test]
#[should_panic(expected = "answered 422 Unprocessable Entity")]
async fn rejected_alerts_fail_loudly() {
    let alertmanager = Alertmanager::start("http://127.0.0.1:1/hook").await;
    alertmanager.post_alerts(&json!([{ "annotations": {} }])).await;
}
