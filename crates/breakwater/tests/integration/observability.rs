//! Observability as operators use it: one trace per webhook across the five
//! services in Jaeger (here an in-process OTLP receiver), log lines that
//! lead to it, `/metrics` of every component, and a collector outage that
//! costs nothing but spans.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use breakwater_testkit::otlp::{Kind, OtlpReceiver, ReceivedSpan, tree};
use breakwater_testkit::prometheus::{Scrape, scrape};
use breakwater_testkit::{
    BreakwaterProcess as Process, FakeApiServer, RedisServer, assert_eventually, unique_key_root,
};
use serde_json::{Value, json};

const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";
const SERVICES: [&str; 5] =
    ["breakwater-edge", "breakwater-ratelimit", "breakwater-dedup", "breakwater-storm", "breakwater-crd-writer"];

/// Starts `breakwater <args>`.
async fn breakwater(args: &[&str], env: &[(String, String)]) -> Process {
    Process::start(env!("CARGO_BIN_EXE_breakwater"), args, env).await
}

/// Exports every 50 ms, so spans arrive while the test waits.
fn otlp_env(endpoint: String) -> Vec<(String, String)> {
    // crd-writer's per-CR line, whose ids are checked, is at DEBUG.
    vars(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ("RUST_LOG", "info,breakwater_crd_writer=debug"),
    ])
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The four gRPC components and the edge, each its own process.
struct Split {
    ratelimit: Process,
    dedup: Process,
    storm: Process,
    crd_writer: Process,
    edge: Process,
}

impl Split {
    async fn start(common: &[(String, String)], per: impl Fn(&str) -> Vec<(String, String)>) -> Self {
        let start = async |name: &str, extra: &[&str]| {
            let mut env = common.to_vec();
            env.extend(per(name));
            let mut args = vec![name, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
            args.extend_from_slice(extra);
            breakwater(&args, &env).await
        };
        let ratelimit = start("ratelimit", &[]).await;
        let dedup = start("dedup", &[]).await;
        let storm = start("storm", &[]).await;
        let crd_writer = start("crd-writer", &[]).await;
        let mut env = common.to_vec();
        env.extend(vars(&[
            ("BREAKWATER_EDGE__COMPONENTS__RATELIMIT", &ratelimit.url()),
            ("BREAKWATER_EDGE__COMPONENTS__DEDUP", &dedup.url()),
            ("BREAKWATER_EDGE__COMPONENTS__STORM", &storm.url()),
            ("BREAKWATER_EDGE__COMPONENTS__CRD_WRITER", &crd_writer.url()),
        ]));
        let edge = breakwater(&["edge", "--listen", "127.0.0.1:0"], &env).await;
        Self { ratelimit, dedup, storm, crd_writer, edge }
    }
}

async fn post(edge: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(format!("{edge}/api/v1/signals/prometheus")).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("edge answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

fn alert(name: &str, pod: &str) -> Value {
    json!({"status": "firing", "labels": {"alertname": name, "namespace": "prod", "pod": pod}})
}

fn by_id(spans: &[ReceivedSpan]) -> HashMap<&str, &ReceivedSpan> {
    spans.iter().map(|s| (s.span_id.as_str(), s)).collect()
}

/// Whether `ancestor` is on `span`'s way to the root.
fn descends_from(spans: &HashMap<&str, &ReceivedSpan>, span: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
    let mut parent = span.parent_span_id.as_str();
    for _ in 0..64 {
        if parent == ancestor.span_id {
            return true;
        }
        match spans.get(parent) {
            Some(p) => parent = p.parent_span_id.as_str(),
            None => return false,
        }
    }
    false
}

fn services_of(spans: &[ReceivedSpan], trace: &str) -> BTreeSet<String> {
    spans.iter().filter(|s| s.trace_id == trace).map(|s| s.service_name.clone()).collect()
}

/// The acceptance scenario: one webhook through split-mode components on
/// Redis and the fake Kubernetes API, with a caller's `traceparent`.
#[tokio::test]
async fn one_trace_across_five_services_continuing_the_callers() {
    let receiver = OtlpReceiver::start().await;
    let redis = RedisServer::start().await;
    let api = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let key_root = unique_key_root("otlp");
    let mut common = otlp_env(receiver.endpoint());
    common.extend(vars(&[
        ("KUBECONFIG", &api.write_kubeconfig(dir.path())),
        ("BREAKWATER_CRD_WRITER__SINK", "kubernetes"),
    ]));
    let split = Split::start(&common, |component| {
        let section = component.to_uppercase();
        if matches!(component, "ratelimit" | "dedup" | "storm") {
            vec![
                (format!("BREAKWATER_{section}__STORE"), "redis".to_owned()),
                (format!("BREAKWATER_{section}__REDIS__URL"), redis.url()),
                (format!("BREAKWATER_{section}__REDIS__KEY_ROOT"), key_root.clone()),
            ]
        } else {
            Vec::new()
        }
    })
    .await;

    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let (status, body) = post(
        &split.edge.url(),
        &json!({"alerts": [alert("TracedAlert", "api-trace-1")]}),
        &[("traceparent", &traceparent), ("x-request-id", "otlp-scenario-1")],
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let spans = receiver
        .wait_for_spans(Duration::from_secs(20), |spans| {
            let services = services_of(spans, CALLER_TRACE);
            let k8s = spans.iter().any(|s| s.trace_id == CALLER_TRACE && s.attr("k8s.verb") == Some("create"));
            // The edge's request span ends last, after every other span of its process.
            let request = spans.iter().any(|s| s.trace_id == CALLER_TRACE && s.parent_span_id == CALLER_SPAN);
            SERVICES.iter().all(|s| services.contains(*s)) && k8s && request
        })
        .await;
    let trace: Vec<ReceivedSpan> = spans.iter().filter(|s| s.trace_id == CALLER_TRACE).cloned().collect();
    let picture = tree(&spans, CALLER_TRACE);
    let ids = by_id(&trace);

    // The edge's request span continues the caller's span.
    let http = trace
        .iter()
        .find(|s| s.service_name == "breakwater-edge" && s.kind == Kind::Server)
        .unwrap_or_else(|| panic!("no edge server span:\n{picture}"));
    assert_eq!(http.parent_span_id, CALLER_SPAN, "{picture}");
    assert_eq!(http.name, "POST /api/v1/signals/prometheus", "{picture}");
    assert_eq!(http.attr("http.response.status_code"), Some("201"), "{picture}");

    // Each component's server span is the child of the edge's client span for that call,
    // which is inside the request span.
    for (service, rpc) in [
        ("breakwater-ratelimit", "breakwater.v1.RateLimitService"),
        ("breakwater-dedup", "breakwater.v1.DedupService"),
        ("breakwater-storm", "breakwater.v1.StormService"),
        ("breakwater-crd-writer", "breakwater.v1.CrdWriterService"),
    ] {
        let server = trace
            .iter()
            .find(|s| s.service_name == service && s.kind == Kind::Server)
            .unwrap_or_else(|| panic!("no server span in {service}:\n{picture}"));
        assert_eq!(server.attr("rpc.service"), Some(rpc), "{picture}");
        let client = ids.get(server.parent_span_id.as_str()).unwrap_or_else(|| panic!("{service}:\n{picture}"));
        assert_eq!((client.service_name.as_str(), client.kind), ("breakwater-edge", Kind::Client), "{picture}");
        assert_eq!(client.attr("rpc.service"), Some(rpc), "{picture}");
        assert!(descends_from(&ids, client, http), "{service} client span outside the request:\n{picture}");
        // Every span of the component in this trace hangs below one of its server spans.
        for span in trace.iter().filter(|s| s.service_name == service && s.kind != Kind::Server) {
            let under_server = trace
                .iter()
                .filter(|s| s.service_name == service && s.kind == Kind::Server)
                .any(|server| descends_from(&ids, span, server));
            assert!(under_server, "{} in {service} is not under its server span:\n{picture}", span.name);
        }
    }

    // Redis script spans in the three stateful services: names and prefixes, never values.
    for service in ["breakwater-ratelimit", "breakwater-dedup", "breakwater-storm"] {
        let redis_span = trace
            .iter()
            .find(|s| s.service_name == service && s.attr("db.system") == Some("redis"))
            .unwrap_or_else(|| panic!("no Redis span in {service}:\n{picture}"));
        assert_eq!(redis_span.kind, Kind::Client);
        assert!(redis_span.attr("db.redis.script").is_some_and(|n| !n.is_empty()), "{redis_span:?}");
        assert!(redis_span.attr("db.redis.key_prefix").is_some_and(|p| p.starts_with(&key_root)), "{redis_span:?}");
        let values = format!("{:?}", redis_span.attributes);
        assert!(!values.contains("api-trace-1") && !values.contains("TracedAlert"), "alert data in {values}");
    }

    // The CR's create call to the Kubernetes API, under crd-writer's server span.
    let create = trace
        .iter()
        .find(|s| s.attr("k8s.verb") == Some("create"))
        .unwrap_or_else(|| panic!("no Kubernetes span:\n{picture}"));
    assert_eq!((create.service_name.as_str(), create.kind), ("breakwater-crd-writer", Kind::Client), "{picture}");
    assert_eq!(create.attr("http.response.status_code"), Some("201"), "{picture}");

    // The crd-writer's log line for the created CR carries this trace and one of its spans.
    let crd_writer_spans: BTreeSet<&str> =
        trace.iter().filter(|s| s.service_name == "breakwater-crd-writer").map(|s| s.span_id.as_str()).collect();
    let lines = split.crd_writer.stderr();
    let created: Value = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "RemediationRequest created")
        .unwrap_or_else(|| panic!("no 'RemediationRequest created' line in {lines:#?}"));
    assert_eq!(created["trace_id"], CALLER_TRACE, "{created}");
    assert_eq!(created["request_id"], "otlp-scenario-1", "the edge's request id reaches crd-writer's logs: {created}");
    let span_id = created["span_id"].as_str().unwrap_or_default();
    assert!(crd_writer_spans.contains(span_id), "log span {span_id} not exported: {created}\n{picture}");
    drop(split);
}

/// `breakwater up` runs five components in one process: its spans still come
/// from five services, and a webhook without `traceparent` starts a trace at
/// the edge.
#[tokio::test]
async fn up_reports_five_service_names_and_roots_traces_at_the_edge() {
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let sink = dir.path().to_str().expect("utf-8").to_owned();
    let up = breakwater(&["up", "--listen", "127.0.0.1:0", "--sink-dir", &sink], &otlp_env(receiver.endpoint())).await;
    let (status, body) = post(&up.url(), &json!({"alerts": [alert("UpAlert", "web-1")]}), &[]).await;
    assert_eq!(status, 201, "{body}");

    let spans = receiver
        .wait_for_spans(Duration::from_secs(20), |spans| {
            spans.iter().filter(|s| s.is_root() && s.service_name == "breakwater-edge").any(|root| {
                let services = services_of(spans, &root.trace_id);
                SERVICES.iter().all(|s| services.contains(*s))
            })
        })
        .await;
    let root = spans.iter().find(|s| s.is_root() && s.service_name == "breakwater-edge").expect("a root");
    assert_eq!(root.kind, Kind::Server);
    assert_ne!(root.trace_id, CALLER_TRACE);
    let picture = tree(&spans, &root.trace_id);
    // Every span sits in its own component's service, whoever runs it.
    for span in spans.iter().filter(|s| s.trace_id == root.trace_id) {
        let component = span.attr("breakwater.component").unwrap_or_else(|| panic!("{span:?}"));
        assert_eq!(span.service_name, format!("breakwater-{component}"), "{picture}");
    }
    // Human-readable logs in `up` carry the ids too.
    let lines = up.stderr();
    let created = lines
        .iter()
        .find(|l| l.contains("RemediationRequest created"))
        .unwrap_or_else(|| panic!("no created line in {lines:#?}"));
    assert!(created.contains(&format!("trace_id={}", root.trace_id)), "{created}");
}

/// With the collector unreachable the gateway serves as usual and says so
/// once, not per request or per export batch.
#[tokio::test]
async fn an_unreachable_collector_is_reported_once_and_costs_nothing_else() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let dir = tempfile::tempdir().expect("temporary directory");
    let sink = dir.path().to_str().expect("utf-8").to_owned();
    let up = breakwater(&["up", "--listen", "127.0.0.1:0", "--sink-dir", &sink], &otlp_env(endpoint)).await;
    for i in 0..20 {
        let (status, body) = post(&up.url(), &json!({"alerts": [alert("Offline", &format!("p{i}"))]}), &[]).await;
        assert!(status == 201 || status == 202, "{body}");
        // Spread over several export batches.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let warned = |lines: &[String]| lines.iter().filter(|l| l.contains("cannot export traces")).count();
    assert_eventually!(Duration::from_secs(10), async { warned(&up.stderr()) >= 1 }, "the outage is reported");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = up.stderr();
    assert_eq!(warned(&lines), 1, "reported once: {lines:#?}");
}

/// Every component's `/metrics` parses as Prometheus text, and a scripted
/// scenario moves each counter by what happened.
#[tokio::test]
async fn every_components_metrics_move_with_the_scenario() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let common = vars(&[
        ("BREAKWATER_CRD_WRITER__DIRECTORY", dir.path().to_str().expect("utf-8")),
        // Ten signals pass, then the sender is limited (no refill to speak of).
        ("BREAKWATER_RATELIMIT__BURST", "10"),
        ("BREAKWATER_RATELIMIT__SIGNALS_PER_SECOND", "0.001"),
        // 429 instead of the default 503, so the status label shows the per-route setting.
        ("BREAKWATER_EDGE__RATE_LIMITED_STATUS__PROMETHEUS", "429"),
    ]);
    let mut split = Split::start(&common, |_| Vec::new()).await;
    let edge = split.edge.url();
    let scrape_of = async |p: &Process| scrape(&p.metrics_url()).await;
    let (edge_b, ratelimit_b, dedup_b) =
        (scrape_of(&split.edge).await, scrape_of(&split.ratelimit).await, scrape_of(&split.dedup).await);
    let (storm_b, crd_b) = (scrape_of(&split.storm).await, scrape_of(&split.crd_writer).await);

    // Created, then duplicate.
    assert_eq!(post(&edge, &json!({"alerts": [alert("M", "a")]}), &[]).await.0, 201);
    assert_eq!(post(&edge, &json!({"alerts": [alert("M", "a")]}), &[]).await.0, 202);
    // Seven pods of one alertname: five CRs, then the storm opens and one more joins it.
    let pods: Vec<Value> = (0..7).map(|i| alert("Storming", &format!("s{i}"))).collect();
    assert_eq!(post(&edge, &json!({ "alerts": pods }), &[]).await.0, 201);
    let storm_a = scrape_of(&split.storm).await;
    // Degraded: storm's process gone, the alert still lands.
    split.storm.child.kill().await.expect("kill storm");
    // Once the edge has seen the connection close, calls are refused, not lost mid-call (503).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(post(&edge, &json!({"alerts": [alert("Lonely", "b")]}), &[]).await.0, 201);
    // Ten signals used: the next two are over the sender's limit.
    let (status, body) = post(&edge, &json!({"alerts": [alert("X", "c"), alert("Y", "d")]}), &[]).await;
    assert_eq!(status, 429, "{body}");
    let (edge_a, ratelimit_a, dedup_a) =
        (scrape_of(&split.edge).await, scrape_of(&split.ratelimit).await, scrape_of(&split.dedup).await);
    let crd_a = scrape_of(&split.crd_writer).await;

    let delta = |b: &Scrape, a: &Scrape, name: &str, labels: &[(&str, &str)]| a.sum(name, labels) - b.sum(name, labels);
    let src = ("source", "prometheus-alert");
    let signals = |outcome| delta(&edge_b, &edge_a, "breakwater_signals_total", &[src, ("outcome", outcome)]);
    assert_eq!(signals("created"), 7.0, "M, five storm pods before the storm, and Lonely");
    assert_eq!(signals("duplicate"), 1.0);
    assert_eq!(signals("storm_created"), 1.0);
    assert_eq!(signals("storm_aggregated"), 1.0);
    let rejected = |reason| delta(&edge_b, &edge_a, "breakwater_signals_rejected_total", &[src, ("reason", reason)]);
    assert_eq!(rejected("rate_limited"), 2.0, "both signals of the refused webhook");
    assert_eq!(delta(&edge_b, &edge_a, "breakwater_signals_received_total", &[src]), 12.0);
    let route = ("route", "/api/v1/signals/prometheus");
    assert_eq!(delta(&edge_b, &edge_a, "breakwater_http_requests_total", &[route]), 5.0, "five webhooks");
    assert_eq!(delta(&edge_b, &edge_a, "breakwater_http_requests_total", &[route, ("status", "429")]), 1.0);
    assert_eq!(delta(&edge_b, &edge_a, "breakwater_edge_degraded_calls_total", &[("component", "storm")]), 1.0);
    assert_eq!(edge_a.value("breakwater_degraded", &[("component", "edge"), ("concern", "storm")]), Some(1.0));

    // The edge says once that it degrades around storm, in a JSON line that names the request.
    let degraded_line = || {
        split
            .edge
            .stderr()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == "degraded")
    };
    assert_eventually!(Duration::from_secs(5), async { degraded_line().is_some() }, "edge logs 'degraded'");
    let line = degraded_line().unwrap_or_default();
    assert!(line["request_id"].as_str().is_some_and(|id| id.len() == 36), "{line}");
    assert_eq!(line["concern"], "storm", "{line}");

    let decisions =
        |decision| delta(&ratelimit_b, &ratelimit_a, "breakwater_ratelimit_decisions_total", &[("decision", decision)]);
    assert_eq!((decisions("allowed"), decisions("limited")), (4.0, 1.0));

    let check = [("component", "dedup"), ("rpc", "CheckSignals"), ("code", "Ok")];
    assert_eq!(
        delta(&dedup_b, &dedup_a, "breakwater_grpc_server_requests_total", &check),
        4.0,
        "one per allowed webhook"
    );
    let dedup = |decision| delta(&dedup_b, &dedup_a, "breakwater_dedup_decisions_total", &[("decision", decision)]);
    assert_eq!((dedup("new"), dedup("duplicate")), (9.0, 1.0));

    let opened = delta(&storm_b, &storm_a, "breakwater_storms_opened_total", &[("type", "pattern")]);
    assert_eq!(opened, 1.0);
    let storm = |outcome| delta(&storm_b, &storm_a, "breakwater_storm_decisions_total", &[("outcome", outcome)]);
    assert_eq!(
        (storm("none"), storm("opened"), storm("joined")),
        (6.0, 1.0, 1.0),
        "M and five pods, the storm, one more"
    );
    assert_eq!(storm_a.value("breakwater_storms_active", &[]), Some(1.0));

    let crd =
        |kind, outcome| delta(&crd_b, &crd_a, "breakwater_crd_writes_total", &[("kind", kind), ("outcome", outcome)]);
    assert_eq!((crd("create", "created"), crd("storm_create", "created")), (7.0, 1.0));

    // Every family a component exports is described and typed as in the catalogue.
    for scrape in [&edge_a, &ratelimit_a, &dedup_a, &storm_a, &crd_a] {
        for sample in scrape.samples().iter().filter(|s| s.name.starts_with("breakwater_")) {
            let metric = breakwater_telemetry::METRICS
                .iter()
                .find(|m| {
                    sample
                        .name
                        .strip_prefix(m.name)
                        .is_some_and(|rest| ["", "_bucket", "_sum", "_count"].contains(&rest))
                })
                .unwrap_or_else(|| panic!("{} is not in the catalogue", sample.name));
            assert!(scrape.help_of(metric.name).is_some_and(|h| h == metric.help), "{} undescribed", metric.name);
            let kind = format!("{:?}", metric.kind).to_lowercase();
            assert_eq!(scrape.type_of(metric.name), Some(kind.as_str()), "{}", metric.name);
        }
    }
}

/// Credentials in an OTLP endpoint (a user and password, a token as the user, a key in the
/// query) never reach the logs: the start-up line shows the endpoint with them as `***`.
#[tokio::test]
async fn credentials_in_the_otlp_endpoint_are_not_logged_at_start() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint().replacen("://", "://bw:s3cret-pw@", 1) + "?api-key=s3cret-key";
    let process = breakwater(&["ratelimit", "--listen", "127.0.0.1:0"], &otlp_env(endpoint)).await;
    let mut logged = String::new();
    for _ in 0..100 {
        logged = process.stderr().join("\n");
        if logged.contains("OTLP") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(logged.contains("***@127.0.0.1"), "the endpoint is logged, redacted: {logged}");
    assert!(!logged.contains("s3cret"), "no credential is logged: {logged}");
}
