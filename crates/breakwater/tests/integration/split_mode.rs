//! Split mode: every component as its own `breakwater` process, the edge
//! talking to them over loopback gRPC.

use std::time::Duration;

use breakwater_proto::v1 as pb;
use breakwater_proto::v1::ingest_service_client::IngestServiceClient;
use breakwater_testkit::{BreakwaterProcess as Process, assert_eventually};
use serde_json::{Value, json};

/// Starts `breakwater <args>` with warnings-only logs.
async fn start(args: &[&str], env: &[(String, String)]) -> Process {
    let mut env = env.to_vec();
    env.push(("RUST_LOG".to_owned(), "warn".to_owned()));
    Process::start(env!("CARGO_BIN_EXE_breakwater"), args, &env).await
}

async fn post(client: &reqwest::Client, edge: &str, body: &Value) -> (u16, Value) {
    let response =
        client.post(format!("http://{edge}/api/v1/signals/prometheus")).json(body).send().await.expect("edge answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

fn read_cr(dir: &std::path::Path, ns: &str, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(ns).join(format!("{name}.yaml"))).ok()?;
    serde_saphyr::from_str(&text).ok()
}

#[tokio::test]
async fn each_component_in_its_own_process() {
    let dir = tempfile::tempdir().expect("temporary sink directory");
    let sink = dir.path().to_str().expect("utf-8 path").to_owned();
    let fast_flush = vec![("BREAKWATER_CRD_WRITER__FLUSH_INTERVAL_MS".to_owned(), "50".to_owned())];
    let mut ratelimit = start(&["ratelimit", "--listen", "127.0.0.1:0"], &[]).await;
    let mut dedup = start(&["dedup", "--listen", "127.0.0.1:0"], &[]).await;
    let mut storm = start(&["storm", "--listen", "127.0.0.1:0"], &[]).await;
    let mut crd_writer = start(&["crd-writer", "--listen", "127.0.0.1:0", "--sink-dir", &sink], &fast_flush).await;
    let url = |p: &Process| format!("http://{}", p.addr);
    let edge_env = vec![
        ("BREAKWATER_EDGE__COMPONENTS__RATELIMIT".to_owned(), url(&ratelimit)),
        ("BREAKWATER_EDGE__COMPONENTS__DEDUP".to_owned(), url(&dedup)),
        ("BREAKWATER_EDGE__COMPONENTS__STORM".to_owned(), url(&storm)),
        ("BREAKWATER_EDGE__COMPONENTS__CRD_WRITER".to_owned(), url(&crd_writer)),
        ("BREAKWATER_LISTEN__INGEST".to_owned(), "127.0.0.1:0".to_owned()),
    ];
    let edge = start(&["edge", "--listen", "127.0.0.1:0"], &edge_env).await;
    let client = reqwest::Client::new();

    let ready: Value =
        client.get(format!("http://{}/readyz", edge.addr)).send().await.expect("readyz").json().await.expect("json");
    assert_eq!(ready["status"], "ready", "{ready}");

    let alert = json!({"alerts": [{"status": "firing", "labels": {"alertname": "HighMemory", "namespace": "prod", "pod": "api-1"}}]});
    let (status, first) = post(&client, &edge.addr, &alert).await;
    assert_eq!(status, 201, "{first}");
    let name = first["results"][0]["remediationRequestName"].as_str().expect("CR name").to_owned();
    let (status, second) = post(&client, &edge.addr, &alert).await;
    assert_eq!(status, 202, "{second}");
    assert_eq!(second["results"][0]["occurrenceCount"], 2);
    // The same alert through the gRPC ingest API is the third occurrence, on the same CR.
    let ingest_url = format!("http://{}", edge.ingest.as_deref().expect("the ingest API's address"));
    let mut ingest = IngestServiceClient::connect(ingest_url).await.expect("connect to the ingest API");
    let labels = [("alertname", "HighMemory"), ("namespace", "prod"), ("pod", "api-1")];
    let submitted = pb::SubmittedSignal {
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ..Default::default()
    };
    let answer = ingest
        .submit_signals(pb::SubmitSignalsRequest { signals: vec![submitted] })
        .await
        .expect("SubmitSignals")
        .into_inner();
    assert_eq!(answer.results[0].outcome(), pb::SignalOutcome::Duplicate, "{answer:?}");
    assert_eq!(answer.results[0].occurrence_count, 3, "{answer:?}");
    assert_eq!(answer.results[0].remediation.as_ref().map(|r| r.name.as_str()), Some(name.as_str()));
    assert_eventually!(
        Duration::from_secs(5),
        async {
            read_cr(dir.path(), "prod", &name).is_some_and(|cr| cr["spec"]["deduplication"]["occurrenceCount"] == 3)
        },
        "CR {name} counts 3 occurrences"
    );

    // A component process dying degrades its feature only: storm gone, alerts still land.
    storm.child.kill().await.expect("kill storm");
    // Until the edge has seen its connection close, a call could go out on it and fail after
    // sending, which the edge must answer 503 (the call may have been applied); a process
    // gone for a moment is one that refuses connections.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = json!({"alerts": [{"status": "firing", "labels": {"alertname": "DiskFull", "namespace": "prod", "pod": "db-0"}}]});
    let (status, answer) = post(&client, &edge.addr, &other).await;
    assert_eq!(status, 201, "{answer}");
    let ready: Value =
        client.get(format!("http://{}/readyz", edge.addr)).send().await.expect("readyz").json().await.expect("json");
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert!(ready["components"]["storm"]["state"].as_str().is_some_and(|s| s.starts_with("unreachable")), "{ready}");

    // Dedup's process gone: the repeated alert still lands on its CR, no second CR.
    dedup.child.kill().await.expect("kill dedup");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, third) = post(&client, &edge.addr, &alert).await;
    assert_eq!(status, 202, "{third}");
    assert_eq!(third["results"][0]["remediationRequestName"], name.as_str());
    // Ratelimit's process gone: the edge's in-process limiter takes over.
    ratelimit.child.kill().await.expect("kill ratelimit");
    let (status, answer) = post(&client, &edge.addr, &other).await;
    assert_eq!(status, 202, "{answer}");
    let ready: Value =
        client.get(format!("http://{}/readyz", edge.addr)).send().await.expect("readyz").json().await.expect("json");
    let problems = ready["problems"].to_string();
    assert!(problems.contains("ratelimit is unavailable") && problems.contains("dedup is unavailable"), "{ready}");
    let prod = dir.path().join("prod");
    let crs = std::fs::read_dir(&prod).expect("prod CRs").count();
    assert_eq!(crs, 2, "one CR per incident: HighMemory and DiskFull");

    // Only a CR that cannot be written is the sender's problem: 503 with Retry-After.
    crd_writer.child.kill().await.expect("kill crd-writer");
    let response = client
        .post(format!("http://{}/api/v1/signals/prometheus", edge.addr))
        .json(&json!({"alerts": [{"labels": {"alertname": "New", "namespace": "prod", "pod": "x"}}]}))
        .send()
        .await
        .expect("edge answers");
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let ready = client.get(format!("http://{}/readyz", edge.addr)).send().await.expect("readyz");
    assert_eq!(ready.status().as_u16(), 503, "not ready without crd-writer");
}

/// A gRPC component run on its own serves its metrics on a port of its own.
#[tokio::test]
async fn a_component_serves_its_own_metrics() {
    let dedup_process = start(&["dedup", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"], &[]).await;
    let grpc = &dedup_process.addr;
    let channel = breakwater_grpc::connect_lazy(&format!("http://{grpc}"), Duration::from_secs(5)).expect("channel");
    let mut dedup = breakwater_proto::v1::dedup_service_client::DedupServiceClient::new(channel);
    let query = breakwater_proto::v1::DedupQuery {
        fingerprint: breakwater_signal::fingerprint_of(&["A", "ns", "Pod", "p"]),
        status: breakwater_proto::v1::SignalStatus::Firing.into(),
        namespace: "ns".into(),
        delivery_key: String::new(),
    };
    dedup
        .check_signals(breakwater_proto::v1::CheckSignalsRequest { queries: vec![query] })
        .await
        .expect("dedup answers");
    // The exporter may answer an empty page before its first render: scrape until it has one.
    let scrape =
        || async { reqwest::get(dedup_process.metrics_url()).await.expect("GET /metrics").text().await.expect("text") };
    assert_eventually!(
        Duration::from_secs(5),
        async { scrape().await.contains("breakwater_dedup_decisions_total{decision=\"new\"} 1") },
        "{}",
        scrape().await
    );
}
