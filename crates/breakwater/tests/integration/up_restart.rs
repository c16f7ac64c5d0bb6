//! `breakwater up` keeps dedup and storm state on disk beside its CR
//! directory: killed with SIGKILL and restarted on the same directory, it
//! answers as if it had never stopped.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use breakwater_testkit::BreakwaterProcess as Process;
use serde_json::{Value, json};

/// `breakwater up` on a free port, writing CRs under `sink`.
async fn up(sink: &Path) -> Process {
    let sink = sink.to_str().expect("utf-8 path");
    let env = [("RUST_LOG".to_owned(), "warn".to_owned())];
    Process::start(env!("CARGO_BIN_EXE_breakwater"), &["up", "--listen", "127.0.0.1:0", "--sink-dir", sink], &env).await
}

/// SIGKILL: no shutdown path runs, nothing is flushed on the way out.
async fn kill_9(mut process: Process) {
    process.child.start_kill().expect("SIGKILL sent");
    let status =
        tokio::time::timeout(Duration::from_secs(10), process.child.wait()).await.expect("dies").expect("wait");
    assert!(!status.success(), "killed, not exited: {status}");
}

async fn post(client: &reqwest::Client, edge: &Process, alerts: &[Value]) -> (u16, Value) {
    let body = json!({"version": "4", "status": "firing", "alerts": alerts});
    let response = client
        .post(format!("{}/api/v1/signals/prometheus", edge.url()))
        .json(&body)
        .send()
        .await
        .expect("edge answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

fn alert(alertname: &str, namespace: &str, pod: &str) -> Value {
    json!({"status": "firing", "labels": {"alertname": alertname, "namespace": namespace, "pod": pod, "severity": "critical"},
           "annotations": {"summary": format!("{pod} is in trouble")}})
}

/// The CR files under `<sink>/<namespace>/`.
fn cr_files(sink: &Path, namespace: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sink.join(namespace))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.ends_with(".yaml")).collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn a_killed_up_restarts_with_its_incidents_and_storms() {
    let dir = tempfile::tempdir().expect("temporary sink directory");
    let sink = dir.path();
    let client = reqwest::Client::new();
    let gateway = up(sink).await;

    // One incident, and a pattern storm: 5 pods are not a storm, the 6th opens one.
    let (status, first) = post(&client, &gateway, &[alert("HighMemory", "prod", "api-1")]).await;
    assert_eq!((status, &first["results"][0]["outcome"]), (201, &json!("created")), "{first}");
    let incident_cr = first["results"][0]["remediationRequestName"].as_str().expect("CR name").to_owned();
    let pods: Vec<Value> = (1..=6).map(|p| alert("PodCrash", "stage", &format!("web-{p}"))).collect();
    let (status, storm) = post(&client, &gateway, &pods).await;
    assert_eq!(status, 201, "{storm}");
    let opened = &storm["results"][5];
    assert_eq!(opened["outcome"], "storm_created", "{storm}");
    let storm_cr = opened["remediationRequestName"].as_str().expect("storm CR name").to_owned();

    // A second gateway on the same directory is refused, naming it.
    let sink_arg = sink.to_str().expect("utf-8 path");
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .args(["up", "--listen", "127.0.0.1:0", "--sink-dir", sink_arg])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let second = tokio::time::timeout(Duration::from_secs(20), second).await.expect("exits by itself").expect("runs");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second up on the same directory must not start: {stderr}");
    assert!(stderr.contains("is in use by another breakwater process"), "{stderr}");
    assert!(stderr.contains(&sink.join(".breakwater-state").display().to_string()), "{stderr}");

    // Killed right after its answers: nothing answered 2xx may be lost.
    kill_9(gateway).await;
    let gateway = up(sink).await;

    let (status, again) = post(&client, &gateway, &[alert("HighMemory", "prod", "api-1")]).await;
    assert_eq!(status, 202, "{again}");
    let result = &again["results"][0];
    assert_eq!((&result["outcome"], &result["occurrenceCount"]), (&json!("duplicate"), &json!(2)), "{again}");
    assert_eq!(result["remediationRequestName"], incident_cr.as_str(), "{again}");
    assert_eq!(cr_files(sink, "prod"), vec![format!("{incident_cr}.yaml")]);

    let (status, more) = post(&client, &gateway, &[alert("PodCrash", "stage", "web-7")]).await;
    assert_eq!(status, 202, "{more}");
    let result = &more["results"][0];
    assert_eq!(result["outcome"], "storm_aggregated", "{more}");
    assert_eq!(result["remediationRequestName"], storm_cr.as_str(), "{more}");
    // The five pre-threshold CRs and the one storm CR; no second storm.
    assert_eq!(cr_files(sink, "stage").len(), 6, "{:?}", cr_files(sink, "stage"));
    assert!(cr_files(sink, "stage").contains(&format!("{storm_cr}.yaml")));
}

/// Counts answered 202 but not yet written to their CR (crd-writer coalesces them for
/// `flush_interval_ms`) survive `kill -9`: they are journaled beside the state, and the
/// restarted gateway writes them without waiting for another alert.
#[tokio::test]
async fn counts_answered_before_a_kill_reach_the_cr_after_restart() {
    let dir = tempfile::tempdir().expect("temporary sink directory");
    let sink = dir.path();
    let client = reqwest::Client::new();
    let sink_arg = sink.to_str().expect("utf-8 path");
    let args = ["up", "--listen", "127.0.0.1:0", "--sink-dir", sink_arg];
    // Nothing is flushed before the kill: a minute between flushes.
    let slow = [
        ("RUST_LOG".to_owned(), "warn".to_owned()),
        ("BREAKWATER_CRD_WRITER__FLUSH_INTERVAL_MS".to_owned(), "60000".to_owned()),
    ];
    let gateway = Process::start(env!("CARGO_BIN_EXE_breakwater"), &args, &slow).await;
    let mut name = String::new();
    for expected in 1..=4 {
        let (status, answer) = post(&client, &gateway, &[alert("HighMemory", "prod", "api-1")]).await;
        assert!(status == 201 || status == 202, "{answer}");
        assert_eq!(answer["results"][0]["occurrenceCount"], expected, "{answer}");
        answer["results"][0]["remediationRequestName"].as_str().expect("CR name").clone_into(&mut name);
    }
    kill_9(gateway).await;
    let count = || -> Option<u64> {
        let text = std::fs::read_to_string(sink.join("prod").join(format!("{name}.yaml"))).ok()?;
        let cr: Value = serde_saphyr::from_str(&text).ok()?;
        cr["spec"]["deduplication"]["occurrenceCount"].as_u64()
    };
    assert_eq!(count(), Some(1), "the kill came before any flush");

    let _restarted = up(sink).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count() != Some(4) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(), Some(4), "the journaled counts were written after the restart");
}
