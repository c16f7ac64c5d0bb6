//! Limits per sender (issue 13): a default plus overrides by sender identity and by namespace,
//! and the `RateLimit-*` headers on every webhook answer, through `breakwater up`.

use breakwater_testkit::BreakwaterProcess as Process;
use serde_json::{Value, json};

/// Enough senders and namespaces to tell a shed one from a spared one. Nothing refills
/// during the test (one signal per 1000 s).
const CONFIG: &str = r#"
[edge]
trusted_proxies = ["127.0.0.1/32"]

[ratelimit]
signals_per_second = 0.001
burst = 100

[[ratelimit.overrides]]
sender = "10.0.0.7"
signals_per_second = 0.001
burst = 3

[[ratelimit.overrides]]
namespace = "team-a"
signals_per_second = 0.001
burst = 2
"#;

fn alert(namespace: &str, pod: &str) -> Value {
    json!({"status": "firing", "labels": {"alertname": "HighMemory", "namespace": namespace, "pod": pod}})
}

/// The answer's status, its `RateLimit-*` headers and `Retry-After`.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<u64>,
    retry_after: Option<u64>,
}

#[tokio::test]
async fn overrides_shed_one_sender_and_namespace_and_every_answer_says_how_much_is_left() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = dir.path().join("breakwater.toml");
    std::fs::write(&config, CONFIG).expect("config written");
    let sink = dir.path().join("remediations");
    let args = [
        "up",
        "--listen",
        "127.0.0.1:0",
        "--sink-dir",
        sink.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ];
    let up = Process::start(env!("CARGO_BIN_EXE_breakwater"), &args, &[("RUST_LOG".into(), "warn".into())]).await;
    let client = reqwest::Client::new();
    let post = async |sender: &str, alerts: Vec<Value>| {
        let response = client
            .post(format!("{}/api/v1/signals/prometheus", up.url()))
            .header("x-forwarded-for", sender)
            .json(&json!({"version": "4", "status": "firing", "alerts": alerts}))
            .send()
            .await
            .expect("edge answers");
        let header = |name: &str| response.headers().get(name)?.to_str().ok()?.parse::<u64>().ok();
        Answer {
            status: response.status().as_u16(),
            limit: header("ratelimit-limit"),
            remaining: header("ratelimit-remaining"),
            reset: header("ratelimit-reset"),
            retry_after: header("retry-after"),
        }
    };
    let answer = |status, limit, remaining, reset, retry_after| Answer {
        status,
        limit: Some(limit),
        remaining: Some(remaining),
        reset: Some(reset),
        retry_after,
    };

    // 10.0.0.7 has a bucket of 3: three alerts fill it, the fourth is shed with 503.
    let pods = |ns, n: usize| (0..n).map(|i| alert(ns, &format!("p{i}"))).collect::<Vec<_>>();
    assert_eq!(post("10.0.0.7", pods("prod", 3)).await, answer(201, 3, 0, 3_000, None));
    // 1 signal at 0.001/s: 1000 s until it fits; 3000 s until the bucket is full again.
    assert_eq!(post("10.0.0.7", pods("prod", 1)).await, answer(503, 3, 0, 3_000, Some(1_000)));
    // Another sender is on the default bucket of 100, untouched by the flood.
    assert_eq!(post("10.0.0.8", pods("prod", 1)).await, answer(202, 100, 99, 1_000, None));

    // team-a has a bucket of 2 that every sender shares.
    assert_eq!(post("10.0.0.9", pods("team-a", 2)).await, answer(201, 2, 0, 2_000, None));
    assert_eq!(post("10.0.0.10", pods("team-a", 1)).await, answer(503, 2, 0, 2_000, Some(1_000)));
    // That sender was charged nothing for the refused webhook, and may still send elsewhere.
    assert_eq!(post("10.0.0.10", vec![alert("prod", "q")]).await, answer(201, 100, 99, 1_000, None));
}
