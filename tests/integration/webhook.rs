//! The webhook contract end to end, on both backends: per-alert results,
//! resolutions, duplicates and bad input (reference spec §11.1, §11.2).

use std::time::Duration;

use breakwater_testkit::assert_eventually;
use breakwater_tests::{Alert, Backend, TestGateway, webhook};
use serde_json::json;

async fn three_alerts_get_three_results(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let body = webhook(&[
        Alert::firing("HighMemory").in_ns("prod").pod("api-1"),
        Alert::firing("DiskFull").in_ns("prod").pod("db-0"),
        Alert::resolved("CpuHigh").in_ns("prod").pod("web-1"),
    ]);
    let (status, answer) = gw.post_prometheus(&body).await;
    assert_eq!(status, 201, "{answer}");
    let results = answer["results"].as_array().expect("results list");
    assert_eq!(results.len(), 3, "{answer}");
    assert_eq!(results[0]["outcome"], "created");
    assert_eq!(results[0]["alertName"], "HighMemory");
    assert_eq!(results[1]["outcome"], "created");
    assert_eq!(results[2]["outcome"], "resolved_unknown");
    assert!(results[2].get("remediationRequestName").is_none(), "a resolution names no CR: {answer}");
    let crs = gw.remediations();
    assert_eq!(crs.len(), 2, "the resolved alert creates no CR: {crs:?}");
    for r in &results[..2] {
        let ns = r["remediationRequestNamespace"].as_str().expect("namespace");
        let name = r["remediationRequestName"].as_str().expect("name");
        let cr = gw.remediation(ns, name).unwrap_or_else(|| panic!("CR {ns}/{name} exists"));
        assert_eq!(cr["spec"]["signalFingerprint"], r["fingerprint"]);
    }
}

#[tokio::test]
async fn three_alerts_get_three_results_embedded() {
    three_alerts_get_three_results(Backend::Embedded).await;
}

#[tokio::test]
async fn three_alerts_get_three_results_redis_and_kube() {
    three_alerts_get_three_results(Backend::RedisAndKube).await;
}

/// A webhook's common labels and annotations travel once per batch, yet every CR lists them,
/// under the alert's own values, and they count for the alert's identity and namespace.
async fn common_labels_and_annotations_reach_every_cr(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let mut body = webhook(&[
        Alert::firing("HighMemory").pod("api-1").annotation("summary", "own summary"),
        Alert::firing("HighMemory").pod("api-2"),
    ]);
    // The alerts lack what the group shares (a proxy may trim them; Alertmanager does not).
    body["commonLabels"] = json!({"alertname": "HighMemory", "namespace": "prod", "team": "db"});
    body["commonAnnotations"] = json!({"runbook": "https://runbooks/db", "summary": "shared summary"});
    let (status, answer) = gw.post_prometheus(&body).await;
    assert_eq!(status, 201, "{answer}");
    let mut summaries = Vec::new();
    for r in answer["results"].as_array().expect("results") {
        assert_eq!(r["outcome"], "created", "{answer}");
        assert_eq!(r["remediationRequestNamespace"], "prod", "the common namespace label places it: {answer}");
        let cr = gw.remediation("prod", r["remediationRequestName"].as_str().expect("name")).expect("the CR");
        assert_eq!(cr["spec"]["signalLabels"]["team"], "db", "{cr}");
        assert_eq!(cr["spec"]["signalAnnotations"]["runbook"], "https://runbooks/db", "{cr}");
        summaries.push(cr["spec"]["signalAnnotations"]["summary"].as_str().expect("summary").to_owned());
    }
    summaries.sort();
    assert_eq!(summaries, ["own summary", "shared summary"]);
}

#[tokio::test]
async fn common_labels_and_annotations_reach_every_cr_embedded() {
    common_labels_and_annotations_reach_every_cr(Backend::Embedded).await;
}

#[tokio::test]
async fn common_labels_and_annotations_reach_every_cr_redis_and_kube() {
    common_labels_and_annotations_reach_every_cr(Backend::RedisAndKube).await;
}

/// Reference: "returns 202 Accepted for duplicate alerts within TTL window" and
/// "tracks duplicate count and timestamps".
async fn duplicate_alert_is_counted_on_its_cr(backend: Backend) {
    let mut gw = TestGateway::start(backend).await;
    let body = webhook(&[Alert::firing("HighMemory").in_ns("prod").pod("api-1")]);
    let (first, answer) = gw.post_prometheus(&body).await;
    assert_eq!(first, 201, "{answer}");
    let name = answer["results"][0]["remediationRequestName"].as_str().expect("CR name").to_owned();
    let (second, answer) = gw.post_prometheus(&body).await;
    assert_eq!(second, 202, "{answer}");
    assert_eq!(answer["results"][0]["outcome"], "duplicate");
    assert_eq!(answer["results"][0]["remediationRequestName"], name.as_str());
    assert_eq!(answer["results"][0]["occurrenceCount"], 2);
    assert_eventually!(
        Duration::from_secs(5),
        async { gw.remediation("prod", &name).is_some_and(|cr| cr["spec"]["deduplication"]["occurrenceCount"] == 2) },
        "occurrenceCount reaches 2: {:?}",
        gw.remediation("prod", &name)
    );
    assert_eq!(gw.remediations().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn duplicate_alert_is_counted_on_its_cr_embedded() {
    duplicate_alert_is_counted_on_its_cr(Backend::Embedded).await;
}

#[tokio::test]
async fn duplicate_alert_is_counted_on_its_cr_redis_and_kube() {
    duplicate_alert_is_counted_on_its_cr(Backend::RedisAndKube).await;
}

/// A resolution closes the incident: the next firing is a new incident with a new CR.
#[tokio::test]
async fn resolved_then_firing_again_is_a_new_incident() {
    let gw = TestGateway::start(Backend::Embedded).await;
    let firing = webhook(&[Alert::firing("HighMemory").in_ns("prod").pod("api-1")]);
    let (_, a) = gw.post_prometheus(&firing).await;
    let (status, r) = gw.post_prometheus(&webhook(&[Alert::resolved("HighMemory").in_ns("prod").pod("api-1")])).await;
    assert_eq!((status, r["results"][0]["outcome"].as_str()), (202, Some("resolved")));
    assert_eq!(r["results"][0]["remediationRequestName"], a["results"][0]["remediationRequestName"]);
    tokio::time::sleep(Duration::from_millis(2)).await;
    let (status, b) = gw.post_prometheus(&firing).await;
    assert_eq!(status, 201, "{b}");
    assert_ne!(a["results"][0]["remediationRequestName"], b["results"][0]["remediationRequestName"]);
    assert_eq!(gw.remediations().len(), 2);
}

/// Reference: "should reject invalid payloads" — and nothing is left behind.
#[tokio::test]
async fn bad_input_gets_rfc7807_and_leaves_nothing_behind() {
    let gw = TestGateway::start(Backend::Embedded).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/signals/prometheus", gw.url);
    let cases: Vec<(&str, Option<&str>, u16)> = vec![
        ("{not json", Some("application/json"), 400),
        ("", Some("application/json"), 400),
        ("null", Some("application/json"), 400),
        (r#"{"alerts":[]}"#, Some("application/json"), 400),
        (r#"{"alerts":"A"}"#, Some("application/json"), 400),
        (r#"{"alerts":[{"labels":{"alertname":"A"}}]}"#, Some("text/plain"), 415),
        (r#"{"alerts":[{"labels":{"alertname":"A"}}]}"#, Some("not a mime"), 400),
    ];
    for (body, content_type, expected) in cases {
        let mut req = http.post(&url).body(body.to_owned());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let response = req.send().await.expect("request");
        assert_eq!(response.status().as_u16(), expected, "body {body:?}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let request_id = response.headers()["x-request-id"].to_str().expect("ascii").to_owned();
        let problem: serde_json::Value = response.json().await.expect("problem body");
        assert_eq!(problem["status"], expected);
        assert_eq!(problem["request_id"], request_id.as_str());
        assert_eq!(problem["instance"], "/api/v1/signals/prometheus");
        assert!(problem["type"].as_str().is_some_and(|t| t.starts_with("https://kubernaut.io/errors/")));
    }
    let too_big = json!({"alerts": [Alert::firing("A").annotation("x", &"y".repeat(600 * 1024)).json()]});
    let response = http.post(&url).json(&too_big).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 413);
    let response = http.get(&url).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 405);
    let response = http.post(format!("{}/api/v1/nowhere", gw.url)).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 404);
    assert!(gw.remediations().is_empty(), "rejected input created CRs: {:?}", gw.remediations());
}

/// A batch with some invalid alerts: the valid ones count, each invalid one is answered in
/// its result with its reason, and the webhook is 2xx, so Alertmanager neither drops the
/// valid alerts (it drops 4xx) nor retries the batch for ever (it retries 5xx).
async fn a_batch_with_invalid_alerts_counts_the_valid_ones(backend: Backend) {
    let mut gw = TestGateway::start(backend).await;
    let body = json!({"alerts": [
        Alert::firing("HighMemory").in_ns("prod").pod("api-1").json(),
        {"labels": {"namespace": "prod"}},
        {"labels": {"alertname": "Pending"}, "status": "pending"},
        {"labels": "api_key=hunter2"},
        Alert::firing("DiskFull").in_ns("prod").pod("db-0").json(),
    ]});
    let (status, answer) = gw.post_prometheus(&body).await;
    assert_eq!(status, 201, "{answer}");
    let results = answer["results"].as_array().expect("results");
    let outcomes: Vec<&str> = results.iter().map(|r| r["outcome"].as_str().unwrap_or_default()).collect();
    assert_eq!(outcomes, ["created", "rejected", "rejected", "rejected", "created"], "{answer}");
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i, "{answer}");
    }
    let reason = |i: usize| results[i]["reason"].as_str().unwrap_or_default().to_owned();
    assert_eq!(reason(1), "alerts[1]: labels.alertname is required");
    assert!(reason(2).contains("\"pending\""), "{answer}");
    assert_eq!(results[2]["alertName"], "Pending");
    // A reason says where and what, never the value sent.
    assert!(reason(3).starts_with("alerts[3] is not a valid alert") && !reason(3).contains("hunter2"), "{answer}");
    assert!(answer["message"].as_str().is_some_and(|m| m.contains("3 rejected")), "{answer}");
    assert_eq!(gw.remediations().len(), 2, "only the valid alerts are recorded");
    // The sender's retry of the same batch counts the valid alerts on their CRs, nothing new.
    let (status, again) = gw.post_prometheus(&body).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["results"][0]["outcome"], "duplicate");
    assert_eq!(again["results"][1]["outcome"], "rejected");
    assert_eq!(gw.remediations().len(), 2);
    let metrics = reqwest::get(format!("{}/metrics", gw.url)).await.expect("metrics").text().await.expect("text");
    assert!(
        metrics.lines().any(|l| l.starts_with("breakwater_signals_rejected_total")
            && l.contains("reason=\"invalid\"")
            && l.ends_with(" 6")),
        "each invalid alert is counted: {metrics}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_batch_with_invalid_alerts_counts_the_valid_ones_embedded() {
    a_batch_with_invalid_alerts_counts_the_valid_ones(Backend::Embedded).await;
}

#[tokio::test]
async fn a_batch_with_invalid_alerts_counts_the_valid_ones_redis_and_kube() {
    a_batch_with_invalid_alerts_counts_the_valid_ones(Backend::RedisAndKube).await;
}

/// An alert without a namespace lands in the fallback namespace, labelled as such (it went
/// to `default` in the gateway Breakwater replaces), and kube-state-metrics alerts can be
/// placed by `exported_namespace`.
async fn namespaces_follow_the_configured_labels_and_the_fallback(backend: Backend) {
    let gw = TestGateway::start_with(backend, |config| {
        config.edge.namespace_labels = vec!["exported_namespace".into(), "namespace".into()];
    })
    .await;
    let body = webhook(&[
        Alert::firing("NodeDown").label("node", "n1"),
        Alert::firing("KubePodCrashLooping").in_ns("monitoring").label("exported_namespace", "shop").pod("api-1"),
        Alert::firing("EtcdDown").in_ns("kube-system").pod("etcd-0"),
    ]);
    let (status, answer) = gw.post_prometheus(&body).await;
    assert_eq!(status, 201, "{answer}");
    // kube-system is denied by default (edge.namespaces.deny): that alert alone is rejected.
    assert_eq!(answer["results"][2]["outcome"], "rejected", "{answer}");
    assert!(answer["results"][2]["reason"].as_str().is_some_and(|r| r.contains("edge.namespaces")), "{answer}");
    let placed = |i: usize| {
        let r = &answer["results"][i];
        (
            r["remediationRequestNamespace"].as_str().unwrap_or_default(),
            r["remediationRequestName"].as_str().unwrap_or_default(),
        )
    };
    assert_eq!(placed(0).0, "kubernaut-system", "{answer}");
    assert_eq!(placed(1).0, "shop", "{answer}");
    let cr = gw.remediation(placed(0).0, placed(0).1).expect("the fallback CR");
    assert_eq!(cr["metadata"]["labels"]["kubernaut.io/cluster-scoped"], "true", "{cr}");
    assert_eq!(cr["metadata"]["labels"]["kubernaut.io/origin-namespace"], "", "{cr}");
    let cr = gw.remediation(placed(1).0, placed(1).1).expect("the subject's CR");
    assert!(cr["metadata"]["labels"].get("kubernaut.io/cluster-scoped").is_none(), "{cr}");
    assert_eq!(gw.remediations().len(), 2, "nothing recorded for the denied alert");
}

/// `edge.namespaces.allow` limits where CRs may land; the fallback namespace must be allowed.
#[tokio::test]
async fn only_allowed_namespaces_get_crs() {
    let gw = TestGateway::start_with(Backend::Embedded, |config| {
        config.edge.namespaces.allow = vec!["prod".into(), "kubernaut-system".into()];
    })
    .await;
    let body = webhook(&[Alert::firing("A").in_ns("prod").pod("a"), Alert::firing("B").in_ns("shop").pod("b")]);
    let (status, answer) = gw.post_prometheus(&body).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["results"][0]["outcome"], "created", "{answer}");
    assert_eq!(answer["results"][1]["outcome"], "rejected", "{answer}");
    assert_eq!(gw.remediations().len(), 1);
}

#[tokio::test]
async fn namespaces_follow_the_configured_labels_and_the_fallback_embedded() {
    namespaces_follow_the_configured_labels_and_the_fallback(Backend::Embedded).await;
}

#[tokio::test]
async fn namespaces_follow_the_configured_labels_and_the_fallback_redis_and_kube() {
    namespaces_follow_the_configured_labels_and_the_fallback(Backend::RedisAndKube).await;
}

/// Reference §1.4: error details never repeat secrets or annotation bodies,
/// even when the bad value is one of them.
#[tokio::test]
async fn problem_details_never_repeat_what_was_sent() {
    let gw = TestGateway::start(Backend::Embedded).await;
    let url = format!("{}/api/v1/signals/prometheus", gw.url);
    let bodies = [
        r#"{"alerts":[{"labels":{"alertname":"A"}}],"commonAnnotations":"password=hunter2"}"#,
        r#"{"alerts":[{"labels":{"alertname":"A"}}],"commonLabels":{"api_key":["hunter2"]}}"#,
    ];
    for body in bodies {
        let response = reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let problem: serde_json::Value = response.json().await.expect("problem body");
        assert_eq!(status, 400, "{body}: {problem}");
        let detail = problem["detail"].as_str().expect("detail");
        assert!(!detail.contains("hunter2"), "{detail}");
        assert!(detail.contains("line 1 column"), "still says where: {detail}");
    }
}

/// Reference: "creates CRD from Kubernetes Warning events".
#[tokio::test]
async fn kubernetes_warning_event_creates_a_cr() {
    let gw = TestGateway::start(Backend::RedisAndKube).await;
    let event = json!({
        "type": "Warning", "reason": "OOMKilled", "message": "container killed",
        "involvedObject": {"kind": "Pod", "namespace": "prod", "name": "api-1"},
        "firstTimestamp": "2026-11-01T10:00:00Z"
    });
    let (status, answer) = gw.post("/api/v1/signals/kubernetes-event", &event).await;
    assert_eq!(status, 201, "{answer}");
    let name = answer["results"][0]["remediationRequestName"].as_str().expect("name");
    let cr = gw.remediation("prod", name).expect("CR in the fake API server");
    assert_eq!(cr["spec"]["signalName"], "OOMKilled");
    assert_eq!(cr["spec"]["signalType"], "kubernetes-event");
    assert_eq!(cr["spec"]["severity"], "critical");
    let (status, _) = gw
        .post(
            "/api/v1/signals/kubernetes-event",
            &json!({"type": "Normal", "reason": "Pulled", "involvedObject": {"kind": "Pod", "name": "p"}}),
        )
        .await;
    assert_eq!(status, 400);
}

/// Cluster-scoped signals land in the fallback namespace.
#[tokio::test]
async fn cluster_scoped_event_goes_to_the_fallback_namespace() {
    let gw = TestGateway::start(Backend::Embedded).await;
    let event = json!({"type": "Warning", "reason": "NodeNotReady", "involvedObject": {"kind": "Node", "name": "n1"}});
    let (status, answer) = gw.post("/api/v1/signals/kubernetes-event", &event).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["results"][0]["remediationRequestNamespace"], "kubernaut-system");
}

/// POSTs `body` to the Prometheus route: status, `Retry-After` and the body.
async fn post_with_headers(gw: &TestGateway, body: &serde_json::Value) -> (u16, Option<String>, serde_json::Value) {
    let answer = reqwest::Client::new()
        .post(format!("{}/api/v1/signals/prometheus", gw.url))
        .json(body)
        .send()
        .await
        .expect("webhook");
    let status = answer.status().as_u16();
    let retry_after = answer.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, retry_after, answer.json().await.unwrap_or_default())
}

/// Over its rate, a sender gets what Alertmanager retries (503, not 429, which it drops), with
/// `Retry-After` and a problem that says why, and nothing is recorded; 429 stays available per
/// route for senders that want it.
#[tokio::test]
async fn a_sender_over_its_rate_gets_a_503_it_retries_and_nothing_is_recorded() {
    for (configured, expected) in [(None, 503), (Some(429), 429)] {
        let gw = TestGateway::start_with(Backend::Embedded, |c| {
            c.ratelimit.signals_per_second = 0.001;
            c.ratelimit.burst = 2;
            if let Some(status) = configured {
                c.edge.rate_limited_status.prometheus = status;
            }
        })
        .await;
        let two = webhook(&[Alert::firing("A").in_ns("prod").pod("a"), Alert::firing("B").in_ns("prod").pod("b")]);
        assert_eq!(post_with_headers(&gw, &two).await.0, 201);
        let over = webhook(&[Alert::firing("C").in_ns("prod").pod("c")]);
        let (status, retry_after, problem) = post_with_headers(&gw, &over).await;
        assert_eq!(status, expected, "{problem}");
        let seconds: u64 = retry_after.as_deref().and_then(|v| v.parse().ok()).expect("a Retry-After in seconds");
        assert!(seconds >= 1, "{seconds}");
        assert_eq!(problem["type"], "https://kubernaut.io/errors/rate-limited", "{problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains("over its rate limit")), "{problem}");
        assert_eq!(gw.remediations().len(), 2, "the refused alert left nothing behind");
    }
}

/// The reference gateway's probe paths answer as ours do, so its probes keep working.
#[tokio::test]
async fn the_reference_probe_paths_answer_like_healthz_and_readyz() {
    let gw = TestGateway::start(Backend::Embedded).await;
    for (alias, ours) in [("/health", "/healthz"), ("/ready", "/readyz")] {
        let a = reqwest::get(format!("{}{alias}", gw.url)).await.expect("alias");
        let b = reqwest::get(format!("{}{ours}", gw.url)).await.expect("probe");
        assert_eq!(a.status(), b.status(), "{alias}");
        assert_eq!(a.status().as_u16(), 200, "{alias}");
        let (mut a, mut b): (serde_json::Value, serde_json::Value) =
            (a.json().await.expect("json"), b.json().await.expect("json"));
        // The same answer but for when it was given.
        for answer in [&mut a, &mut b] {
            answer.as_object_mut().map(|o| o.remove("timestamp"));
        }
        assert_eq!(a, b, "{alias} answers what {ours} does");
    }
}
