//! What `breakwater up` logs at the default level while it serves (issue 11, item 8):
//! at most one INFO line per webhook, none for a webhook that only counted repeats, and
//! per-CR detail at DEBUG. The bytes logged per alert are printed (`--nocapture`).

use std::time::Duration;

use breakwater_testkit::BreakwaterProcess as Process;
use serde_json::{Value, json};

const WEBHOOKS: usize = 20;
/// Alert names differ, so no storm folds them: every alert of the first pass creates a CR.
const ALERTS_PER_WEBHOOK: usize = 50;

fn webhook(round: usize) -> Value {
    let alerts: Vec<Value> = (0..ALERTS_PER_WEBHOOK)
        .map(|i| {
            json!({"status": "firing", "labels": {"alertname": format!("LogLoad{round}x{i}"), "namespace": "prod",
                "pod": format!("pod-{round}-{i}"), "severity": "warning"},
                "annotations": {"summary": "pod uses 95% of its memory limit"}})
        })
        .collect();
    json!({"version": "4", "status": "firing", "alerts": alerts})
}

/// Stderr lines since `from`, and their bytes (with newlines).
fn since(gateway: &Process, from: usize) -> (Vec<Value>, usize) {
    let lines = gateway.stderr();
    let lines = &lines[from.min(lines.len())..];
    let bytes = lines.iter().map(|l| l.len() + 1).sum();
    (lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"))).collect(), bytes)
}

async fn send_all(url: &str, bodies: &[Value], expected: u16) {
    let client = reqwest::Client::new();
    for body in bodies {
        let response = client.post(url).json(body).send().await.expect("the edge answers");
        assert_eq!(response.status().as_u16(), expected);
    }
}

#[tokio::test]
async fn one_info_line_per_webhook_that_creates_and_none_for_repeats() {
    let dir = tempfile::tempdir().expect("sink");
    let sink = dir.path().to_str().expect("utf-8 path");
    let env = [("RUST_LOG".to_owned(), "info".to_owned())];
    let gateway = Process::start(
        env!("CARGO_BIN_EXE_breakwater"),
        &["--log-format", "json", "up", "--listen", "127.0.0.1:0", "--sink-dir", sink],
        &env,
    )
    .await;
    let url = format!("{}/api/v1/signals/prometheus", gateway.url());
    let bodies: Vec<Value> = (0..WEBHOOKS).map(webhook).collect();

    // Let start-up lines land first, so they are not counted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = gateway.stderr().len();
    send_all(&url, &bodies, 201).await;
    // The CRs' counts are flushed after the answers; what that logs counts too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (new_lines, new_bytes) = since(&gateway, start);

    let after_new = gateway.stderr().len();
    send_all(&url, &bodies, 202).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (repeat_lines, repeat_bytes) = since(&gateway, after_new);

    let alerts = WEBHOOKS * ALERTS_PER_WEBHOOK;
    eprintln!(
        "logs at info: {new_bytes} bytes for {alerts} new alerts in {WEBHOOKS} webhooks ({:.1} bytes per alert), \
         {repeat_bytes} bytes for as many repeats",
        new_bytes as f64 / alerts as f64
    );
    let info = |lines: &[Value]| lines.iter().filter(|l| l["level"] == "INFO").count();
    assert_eq!(info(&new_lines), WEBHOOKS, "one INFO line per webhook that created CRs: {new_lines:#?}");
    let summary = new_lines.iter().find(|l| l["message"] == "webhook").expect("a webhook line");
    assert_eq!(summary["alerts"], ALERTS_PER_WEBHOOK, "{summary}");
    assert_eq!(summary["created"], ALERTS_PER_WEBHOOK, "{summary}");
    assert!(summary["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{summary}");
    assert!(new_lines.iter().all(|l| l["message"] != "RemediationRequest created"), "per-CR detail is DEBUG");
    assert_eq!(info(&repeat_lines), 0, "webhooks of repeats log nothing at INFO: {repeat_lines:#?}");
    assert!(new_bytes < alerts * 20, "{new_bytes} bytes of log for {alerts} alerts");
}
