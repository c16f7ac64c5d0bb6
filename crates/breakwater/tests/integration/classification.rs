//! Environment, priority and remediation path on the real binary (`breakwater up`): the
//! environment from the namespace's label, then the overrides ConfigMap, read from the
//! testkit's fake API server through the edge's real kube client (CRs written there too);
//! a priority policy file with a team rule, on the API server and in the directory sink; a
//! policy that cannot be used stops the start, naming its file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use breakwater_testkit::{BreakwaterProcess, FakeApiServer, assert_eventually, eventually, prometheus};
use serde_json::{Value, json};

const OVERRIDES_NS: &str = "kubernaut-system";
const OVERRIDES: &str = "kubernaut-environment-overrides";

/// Where `up` writes its CRs.
enum Sink<'a> {
    /// The fake API server (`crd_writer.sink = "kubernetes"`, `KUBECONFIG`).
    Api(&'a FakeApiServer),
    /// YAML files under this directory (`--sink-dir`).
    Directory(&'a Path),
}

/// The variables and arguments of `breakwater up` on a loopback port, with `config` as its
/// file, state under `dir`, CRs to `sink`.
fn command(dir: &Path, config: &str, sink: &Sink<'_>) -> (Vec<(String, String)>, Vec<String>) {
    let file = dir.join("breakwater.toml");
    std::fs::write(&file, config).expect("config file");
    let mut env = vec![
        ("RUST_LOG".to_owned(), "warn".to_owned()),
        ("BREAKWATER_CONFIG".to_owned(), path(&file)),
        ("BREAKWATER_EMBEDDED__DIR".to_owned(), path(&dir.join("state"))),
    ];
    let mut args: Vec<String> = ["up", "--listen", "127.0.0.1:0"].map(str::to_owned).to_vec();
    match sink {
        Sink::Api(api) => {
            env.push(("KUBECONFIG".to_owned(), api.write_kubeconfig(dir)));
            env.push(("BREAKWATER_CRD_WRITER__SINK".to_owned(), "kubernetes".to_owned()));
        }
        Sink::Directory(crs) => args.extend(["--sink-dir".to_owned(), path(crs)]),
    }
    (env, args)
}

fn path(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

async fn up(dir: &Path, config: &str, sink: &Sink<'_>) -> BreakwaterProcess {
    let (env, args) = command(dir, config, sink);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    BreakwaterProcess::start(env!("CARGO_BIN_EXE_breakwater"), &args, &env).await
}

/// One alert: namespace, pod and extra labels (`severity` is `critical` unless given).
type Alert<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// An Alertmanager webhook with one firing alert per entry.
fn webhook(alerts: &[Alert<'_>]) -> Value {
    let alerts: Vec<Value> = alerts
        .iter()
        .map(|(namespace, pod, extra)| {
            let mut labels = json!({ "alertname": "Classified", "namespace": namespace, "pod": pod });
            for (key, value) in *extra {
                labels[*key] = json!(value);
            }
            if labels.get("severity").is_none() {
                labels["severity"] = json!("critical");
            }
            json!({ "status": "firing", "labels": labels, "annotations": {}, "startsAt": "2026-01-01T00:00:00Z" })
        })
        .collect();
    json!({
        "version": "4", "status": "firing", "receiver": "r", "groupKey": "{}:{}",
        "commonLabels": {}, "commonAnnotations": {}, "alerts": alerts,
    })
}

/// Posts `body` and returns each alert's result.
async fn post(edge: &BreakwaterProcess, body: &Value) -> Vec<Value> {
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/signals/prometheus", edge.url()))
        .json(body)
        .send()
        .await
        .expect("the edge answers");
    let status = response.status().as_u16();
    let answer: Value = response.json().await.expect("a JSON answer");
    assert_eq!(status, 201, "{answer}");
    answer["results"].as_array().cloned().unwrap_or_default()
}

/// `(environment, priority, remediationPath)` of a result.
fn classified(result: &Value) -> (&str, &str, &str) {
    let field = |name: &str| result[name].as_str().unwrap_or_else(|| panic!("no {name} in {result}"));
    (field("environment"), field("priority"), field("remediationPath"))
}

/// The CR a result names, from the API server.
async fn cr_on_api(api: &FakeApiServer, result: &Value) -> Value {
    let namespace = result["remediationRequestNamespace"].as_str().expect("a CR namespace").to_owned();
    let name = result["remediationRequestName"].as_str().expect("a CR name").to_owned();
    eventually(Duration::from_secs(10), || async { api.get("remediationrequests", &namespace, &name) }).await
}

/// The CR a result names, from the directory sink (`<dir>/<namespace>/<name>.yaml`).
async fn cr_in_directory(crs: &Path, result: &Value) -> Value {
    let namespace = result["remediationRequestNamespace"].as_str().expect("a CR namespace");
    let name = result["remediationRequestName"].as_str().expect("a CR name");
    let file: PathBuf = crs.join(namespace).join(format!("{name}.yaml"));
    assert_eventually!(Duration::from_secs(10), async { file.exists() }, "{} written", file.display());
    let text = std::fs::read_to_string(&file).expect("CR file");
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// `(spec.environment, spec.priority, the remediation-path annotation)` of a CR.
fn cr_classified(cr: &Value) -> (&str, &str, &str) {
    (
        cr["spec"]["environment"].as_str().unwrap_or_default(),
        cr["spec"]["priority"].as_str().unwrap_or_default(),
        cr["metadata"]["annotations"]["kubernaut.io/remediation-path"].as_str().unwrap_or_default(),
    )
}

const KUBERNETES: &str = "[edge.classification]\nnamespace_source = \"kubernetes\"\ncache_ttl_secs = 1\n";

/// Order of sources: the namespace label, then the ConfigMap, then the alert's label, else
/// `unknown`; a label added later is seen once the cache entry expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_label_then_the_overrides_configmap_decide_the_environment() {
    let api = FakeApiServer::start().await;
    api.set_namespace_labels("shop", &[("environment", "production")]);
    api.set_namespace_labels("both", &[("environment", "development")]);
    api.set_configmap(OVERRIDES_NS, OVERRIDES, &[("blog", "staging"), ("both", "production")]);
    let dir = tempfile::tempdir().unwrap();
    let edge = up(dir.path(), KUBERNETES, &Sink::Api(&api)).await;

    let results = post(
        &edge,
        &webhook(&[
            ("shop", "p-0", &[]),
            ("plain", "p-1", &[]),
            ("blog", "p-2", &[]),
            ("both", "p-3", &[]),
            ("plain", "p-4", &[("environment", "staging")]),
        ]),
    )
    .await;
    let expected = [
        // (a) The namespace's label makes a critical alert P0 …
        ("production", "P0", "aggressive"),
        // … where a namespace without one leaves it P2.
        ("unknown", "P2", "conservative"),
        // (b) The ConfigMap answers for a namespace without the label.
        ("staging", "P1", "moderate"),
        // (c) The label beats the ConfigMap (production there would be P0).
        ("development", "P2", "manual"),
        // The alert's own label comes after both.
        ("staging", "P1", "moderate"),
    ];
    assert_eq!(results.len(), expected.len());
    for (result, expected) in results.iter().zip(expected) {
        assert_eq!(result["outcome"], "created", "{result}");
        assert_eq!(classified(result), expected, "{result}");
        let cr = cr_on_api(&api, result).await;
        assert_eq!(cr_classified(&cr), expected, "{cr}");
    }

    // (a) again, in time: a namespace labelled later turns the next critical alert from P2
    // into P0 once its cache entry expires.
    // Another alert name each time: repeats of one would open a storm.
    let before = post(&edge, &webhook(&[("later", "p-5", &[("alertname", "Later")])])).await;
    assert_eq!(classified(&before[0]).1, "P2");
    api.set_namespace_labels("later", &[("environment", "production")]);
    let mut after = Vec::new();
    for attempt in 0..50 {
        let name = format!("Later{attempt}");
        after = post(&edge, &webhook(&[("later", "p-6", &[("alertname", &name)])])).await;
        if classified(&after[0]).1 == "P0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(classified(&after[0]), ("production", "P0", "aggressive"), "the label is seen after cache_ttl_secs");
    assert_eq!(cr_classified(&cr_on_api(&api, &after[0]).await), ("production", "P0", "aggressive"));

    let scrape = prometheus::scrape(&edge.metrics_url()).await;
    let lookups = |object: &str, result: &str| {
        scrape.sum("breakwater_environment_lookups_total", &[("object", object), ("result", result)])
    };
    assert!(lookups("namespace", "ok") >= 5.0, "{}", lookups("namespace", "ok"));
    assert!(lookups("configmap", "ok") >= 1.0);
    assert_eq!(lookups("namespace", "error"), 0.0);
}

/// A policy with a team rule and its own remediation path: P0 for the payments team
/// whatever the severity, P3 for everything else (the built-in policy would say P0 for a
/// critical production alert).
const TEAM_POLICY: &str = r#"package kubernaut.gateway.priority
import rego.v1

default priority := "P3"

priority := "P0" if input.labels.team == "payments"

remediation_path := "manual" if input.labels.team == "payments"
"#;

/// (d) on `sink`: the policy file decides, its input carries the environment.
async fn team_rule_decides(sink: &Sink<'_>, dir: &Path, classification: &str) {
    let policy = dir.join("priority.rego");
    std::fs::write(&policy, TEAM_POLICY).unwrap();
    let config = format!("{classification}priority_policy = {:?}\n", path(&policy));
    let edge = up(dir, &config, sink).await;
    let results = post(
        &edge,
        &webhook(&[("shop", "p-0", &[("team", "payments"), ("severity", "warning")]), ("shop", "p-1", &[])]),
    )
    .await;
    assert_eq!(classified(&results[0]), ("production", "P0", "manual"), "{}", results[0]);
    assert_eq!(classified(&results[1]), ("production", "P3", "manual"), "{}", results[1]);
    for (result, expected) in results.iter().zip([("production", "P0", "manual"), ("production", "P3", "manual")]) {
        let cr = match sink {
            Sink::Api(api) => cr_on_api(api, result).await,
            Sink::Directory(crs) => cr_in_directory(crs, result).await,
        };
        assert_eq!(cr_classified(&cr), expected, "{cr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_rule_from_a_policy_file_decides_on_the_api_server() {
    let api = FakeApiServer::start().await;
    api.set_namespace_labels("shop", &[("environment", "production")]);
    let dir = tempfile::tempdir().unwrap();
    team_rule_decides(&Sink::Api(&api), dir.path(), KUBERNETES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_rule_from_a_policy_file_decides_in_the_directory_sink() {
    let dir = tempfile::tempdir().unwrap();
    let crs = dir.path().join("crs");
    let table = "[edge.classification]\nenvironments = { shop = \"production\" }\n";
    team_rule_decides(&Sink::Directory(&crs), dir.path(), table).await;
}

/// `breakwater up` as `command` builds it, run to its exit: whether it succeeded and what
/// it printed. One still running after 20 s fails the test.
async fn exits(dir: &Path, config: &str, sink: &Sink<'_>) -> (bool, String) {
    let (env, args) = command(dir, config, sink);
    let mut process = tokio::process::Command::new(env!("CARGO_BIN_EXE_breakwater"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("BREAKWATER_") || name == "KUBECONFIG") {
        process.env_remove(name);
    }
    let run = process.args(&args).envs(env).kill_on_drop(true).output();
    let output = tokio::time::timeout(Duration::from_secs(20), run).await.expect("exits by itself").expect("runs");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), printed)
}

/// (e) on `sink`: a policy that does not compile, or answers no priority, stops the start
/// with a message naming the file; nothing is written.
async fn a_bad_policy_is_refused(sink: &Sink<'_>, dir: &Path, classification: &str) {
    for (name, text, says) in [
        ("broken.rego", "package kubernaut.gateway.priority\npriority := (\n", "does not compile"),
        (
            "unanswered.rego",
            "package kubernaut.gateway.priority\nimport rego.v1\npriority := \"urgent\"\n",
            "does not answer data.kubernaut.gateway.priority.priority with P0..P3",
        ),
    ] {
        let policy = dir.join(name);
        std::fs::write(&policy, text).unwrap();
        let config = format!("{classification}priority_policy = {:?}\n", path(&policy));
        let (started, printed) = exits(dir, &config, sink).await;
        assert!(!started, "{name}: {printed}");
        assert!(printed.contains(&path(&policy)) && printed.contains(says), "{name}: {printed}");
    }
}

#[tokio::test]
async fn a_bad_policy_stops_the_start_with_the_api_server() {
    let api = FakeApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    a_bad_policy_is_refused(&Sink::Api(&api), dir.path(), KUBERNETES).await;
    assert!(api.objects("remediationrequests").is_empty());
}

#[tokio::test]
async fn a_bad_policy_stops_the_start_with_the_directory_sink() {
    let dir = tempfile::tempdir().unwrap();
    let crs = dir.path().join("crs");
    a_bad_policy_is_refused(&Sink::Directory(&crs), dir.path(), "[edge.classification]\n").await;
    assert!(!crs.join("shop").exists());
}
