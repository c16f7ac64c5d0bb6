use std::net::Ipv4Addr;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

use super::WebhookRecorder;

/// An upstream that echoes the request body and content type with status 207.
async fn start_upstream() -> String {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    let app = Router::new()
        .route(
            "/hook",
            post(|headers: HeaderMap, body: String| async move {
                let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let reply = json!({ "got": body, "content_type": content_type });
                (StatusCode::MULTI_STATUS, [("x-upstream", "yes")], axum::Json(reply))
            }),
        )
        .route("/plain", post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "busy") }));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("upstream serves") });
    format!("http://{addr}")
}

#[tokio::test]
async fn forwards_unchanged_and_records_each_exchange() {
    let recorder = WebhookRecorder::start(&start_upstream().await).await;
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/hook?x=1", recorder.url()))
        .json(&json!({ "alerts": [1, 2] }))
        .send()
        .await
        .expect("request through the recorder");
    assert_eq!(response.status(), 207);
    assert_eq!(response.headers()["x-upstream"], "yes");
    let body: Value = response.json().await.expect("JSON answer");
    assert_eq!(body["content_type"], "application/json");
    assert_eq!(body["got"], r#"{"alerts":[1,2]}"#);

    let plain = http.post(format!("{}/plain", recorder.url())).body("text").send().await.expect("request");
    assert_eq!(plain.status(), 503);
    assert_eq!(plain.text().await.expect("body"), "busy");

    let exchanges = recorder.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(exchanges[0].path, "/hook?x=1");
    assert_eq!(exchanges[0].request_body, json!({ "alerts": [1, 2] }));
    assert_eq!(exchanges[0].status, 207);
    assert_eq!(exchanges[0].response_body["got"], r#"{"alerts":[1,2]}"#);
    assert_eq!(exchanges[1].status, 503);
    assert_eq!(exchanges[1].request_body, Value::Null);
    assert_eq!(&exchanges[1].request_bytes[..], b"text");
    assert_eq!(exchanges[1].response_body, Value::Null);
}

#[tokio::test]
async fn unreachable_upstream_is_a_recorded_502() {
    // Bind and drop a listener to get a port where nothing listens.
    let port = crate::port::pick_unused_port();
    let recorder = WebhookRecorder::start(&format!("http://127.0.0.1:{port}")).await;
    let response = reqwest::Client::new().post(recorder.url()).body("{}").send().await.expect("request");
    assert_eq!(response.status(), 502);
    let exchanges = recorder.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(exchanges[0].status, 502);
    assert_eq!(exchanges[0].request_body, serde_json::json!({}));
}

#[tokio::test]
#[should_panic(expected = "saw 0 of 1 expected exchanges")]
async fn wait_for_panics_with_what_it_saw() {
    let recorder = WebhookRecorder::start("http://127.0.0.1:1").await;
    recorder.wait_for(1, Duration::from_millis(50)).await;
}
