//! Support for the cross-service tests: a whole gateway on loopback, on
//! either backend, and alert fixtures.
//!
//! [`TestGateway::start`] runs what `breakwater up` runs (the same
//! [`breakwater::Gateway`]) with either the embedded default (in-process
//! stores, YAML files in a temporary directory) or Redis (a real
//! `redis-server` of the test's own) plus the fake Kubernetes API server.

use std::sync::Arc;
use std::time::Duration;

use breakwater::{Config, Gateway};
use breakwater_crd_writer::sink::IncidentEntry;
use breakwater_crd_writer::{KubeSink, RemediationRequest, RemediationSink};
use breakwater_keyspace::RedisConfig;
use breakwater_testkit::{FakeApiServer, RedisServer, unique_key_root};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Where state and CRs live in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `breakwater up` defaults: in-process stores, CRs as YAML files.
    Embedded,
    /// Redis for ratelimit, dedup and storm; CRs in the fake Kubernetes API.
    RedisAndKube,
}

/// A running gateway and the parts behind it.
pub struct TestGateway {
    pub url: String,
    /// The edge's gRPC ingest API (`http://127.0.0.1:port`).
    pub ingest_url: String,
    pub backend: Backend,
    pub fake_api: Option<FakeApiServer>,
    pub redis: Option<RedisServer>,
    /// The Kubernetes sink the gateway writes through, and a client of the test's own to the
    /// fake API server, as the remediation controller's (Redis and Kubernetes only).
    kube_sink: Option<Arc<dyn RemediationSink>>,
    kube_client: Option<kube::Client>,
    gateway: Option<Gateway>,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl TestGateway {
    /// Starts a gateway with coalesced writes flushed every 50 ms.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Like [`TestGateway::start`], with a chance to adjust the config.
    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Self {
        let redis = match backend {
            Backend::Embedded => None,
            Backend::RedisAndKube => Some(RedisServer::start().await),
        };
        Self::start_on(redis, adjust).await
    }

    /// A gateway whose ratelimit, dedup and storm share `redis` (the
    /// development topology), with CRs in the fake Kubernetes API.
    pub async fn start_with_redis(redis: RedisServer, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(Some(redis), adjust).await
    }

    async fn start_on(redis: Option<RedisServer>, adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory for the directory sink");
        let mut config = Config::default();
        config.crd_writer.directory = dir.path().to_path_buf();
        config.crd_writer.flush_interval_ms = 50;
        let (mut fake_api, mut sink, mut backend) = (None, None::<Arc<dyn RemediationSink>>, Backend::Embedded);
        if let Some(server) = &redis {
            backend = Backend::RedisAndKube;
            let redis_config =
                RedisConfig { url: server.url(), key_root: unique_key_root("gateway"), ..RedisConfig::default() };
            config.dedup.store = breakwater_dedup::StoreKind::Redis;
            config.dedup.redis = redis_config.clone();
            config.storm.store = breakwater_storm::StoreKind::Redis;
            config.storm.redis = redis_config.clone();
            config.ratelimit.store = breakwater_ratelimit::StoreKind::Redis;
            config.ratelimit.redis = redis_config;
            let api = FakeApiServer::start().await;
            sink = Some(Arc::new(KubeSink::new(
                api.client_without_retry(),
                config.crd_writer.retry.clone(),
                config.crd_writer.fallback_namespace.clone(),
            )));
            fake_api = Some(api);
        }
        adjust(&mut config);
        let kube_sink = sink.clone();
        let kube_client = fake_api.as_ref().map(FakeApiServer::client);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port for the edge");
        let ingest = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port for the ingest API");
        let gateway = Gateway::start(config, sink, listener, Some(ingest)).await.expect("gateway starts");
        let url = format!("http://{}", gateway.edge_addr);
        let ingest_url = gateway.ingest_addr.map(|a| format!("http://{a}")).unwrap_or_default();
        let http = reqwest::Client::new();
        Self { url, ingest_url, backend, fake_api, redis, kube_sink, kube_client, gateway: Some(gateway), dir, http }
    }

    /// Posts an Alertmanager webhook; returns the status and the JSON body.
    pub async fn post_prometheus(&self, body: &Value) -> (u16, Value) {
        self.post("/api/v1/signals/prometheus", body).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Calls to components that failed and were degraded around, from the
    /// edge's `/metrics` (each nextest test is its own process, so its own count).
    pub async fn degraded_calls(&self) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| l.starts_with("breakwater_edge_degraded_calls_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Every RemediationRequest written so far, as JSON objects.
    pub fn remediations(&self) -> Vec<Value> {
        match &self.fake_api {
            Some(api) => api.objects("remediationrequests"),
            None => read_yaml_tree(self.dir.path()),
        }
    }

    /// The RemediationRequest `namespace/name`, if written.
    pub fn remediation(&self, namespace: &str, name: &str) -> Option<Value> {
        self.remediations()
            .into_iter()
            .find(|cr| cr["metadata"]["namespace"] == namespace && cr["metadata"]["name"] == name)
    }

    /// Sets the `status` of the RemediationRequest `namespace/name` as the remediation
    /// controller does: through the `/status` subresource on Kubernetes, by editing its file
    /// on the directory sink (as a person closing an incident by hand would).
    pub async fn set_status(&self, namespace: &str, name: &str, status: Value) {
        match &self.kube_client {
            Some(client) => {
                let rrs: kube::Api<RemediationRequest> = kube::Api::namespaced(client.clone(), namespace);
                let patch = kube::api::Patch::Merge(json!({ "status": status }));
                let rr = rrs
                    .patch_status(name, &kube::api::PatchParams::default(), &patch)
                    .await
                    .expect("patch the CR's status");
                self.seen_by_gateway(&rr).await;
            }
            None => {
                let mut cr = self.remediation(namespace, name).expect("the CR to finish exists");
                cr["status"] = status;
                self.write_file(namespace, name, &cr);
            }
        }
    }

    /// Puts `cr` (a whole RemediationRequest, as another writer made it) in the store: created
    /// through the API on Kubernetes, written as a file on the directory sink.
    pub async fn put_remediation(&self, cr: &Value) {
        let namespace = cr["metadata"]["namespace"].as_str().expect("a namespace");
        let name = cr["metadata"]["name"].as_str().expect("a name");
        match &self.kube_client {
            Some(client) => {
                let rrs: kube::Api<RemediationRequest> = kube::Api::namespaced(client.clone(), namespace);
                let rr: RemediationRequest = serde_json::from_value(cr.clone()).expect("a RemediationRequest");
                let rr = rrs.create(&kube::api::PostParams::default(), &rr).await.expect("create the CR");
                self.seen_by_gateway(&rr).await;
            }
            None => self.write_file(namespace, name, cr),
        }
    }

    /// Waits until the gateway's lookups see `rr` as it is: its watch follows the API server
    /// within milliseconds, but a test's next request can be faster.
    async fn seen_by_gateway(&self, rr: &RemediationRequest) {
        let Some(sink) = &self.kube_sink else { return };
        let namespace = rr.metadata.namespace.clone().unwrap_or_default();
        let name = rr.metadata.name.clone().unwrap_or_default();
        let want = IncidentEntry::of(rr).map(|entry| entry.latest);
        breakwater_testkit::assert_eventually!(
            Duration::from_secs(10),
            async {
                let latest = sink.find_latest(&namespace, &rr.spec.signal_fingerprint).await.ok().flatten();
                want.is_none() || latest.as_ref().is_some_and(|l| l.at.name != name || Some(l) == want.as_ref())
            },
            "the gateway does not see {namespace}/{name} as it is"
        );
    }

    /// Writes `cr` to its file of the directory sink, replacing it at once (rename).
    fn write_file(&self, namespace: &str, name: &str, cr: &Value) {
        let dir = self.dir.path().join(namespace);
        std::fs::create_dir_all(&dir).expect("namespace directory");
        let tmp = dir.join(format!(".test-{name}"));
        std::fs::write(&tmp, serde_saphyr::to_string(cr).expect("yaml")).expect("write the CR file");
        std::fs::rename(&tmp, dir.join(format!("{name}.yaml"))).expect("replace the CR file");
    }

    /// Stops the gateway the way `breakwater up` does on SIGTERM (pending counts are flushed).
    pub async fn stop(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown(Duration::from_secs(20)).await.expect("graceful shutdown");
        }
    }
}

fn read_yaml_tree(root: &std::path::Path) -> Vec<Value> {
    let mut out = Vec::new();
    let Ok(namespaces) = std::fs::read_dir(root) else { return out };
    for ns in namespaces.flatten().filter(|e| e.path().is_dir()) {
        for file in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            if file.path().extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(file.path()).expect("readable CR file");
                out.push(serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.path().display())));
            }
        }
    }
    out
}

/// An Alertmanager alert, built up fluently: `Alert::firing("PodCrash").in_ns("prod").pod("p1")`.
#[derive(Debug, Clone)]
pub struct Alert(Value);

impl Alert {
    pub fn firing(name: &str) -> Self {
        Self(json!({"status": "firing", "labels": {"alertname": name, "severity": "critical"}, "annotations": {}}))
    }

    pub fn resolved(name: &str) -> Self {
        let mut a = Self::firing(name);
        a.0["status"] = json!("resolved");
        a
    }

    pub fn in_ns(self, ns: &str) -> Self {
        self.label("namespace", ns)
    }

    pub fn pod(self, pod: &str) -> Self {
        self.label("pod", pod)
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0["labels"][key] = json!(value);
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0["annotations"][key] = json!(value);
        self
    }

    pub fn json(&self) -> Value {
        self.0.clone()
    }
}

/// An Alertmanager webhook v4 body carrying `alerts`, without `groupKey`: each
/// post is a delivery of its own, so posting it again counts again (as
/// Alertmanager's re-notifications do after the copy window).
pub fn webhook(alerts: &[Alert]) -> Value {
    let mut body = notification("", alerts);
    if let Some(fields) = body.as_object_mut() {
        fields.remove("groupKey");
    }
    body
}

/// One Alertmanager notification of group `group_key`, as every peer and every
/// retry sends it: posting it again is a copy, counted once within the copy window.
pub fn notification(group_key: &str, alerts: &[Alert]) -> Value {
    let alerts: Vec<Value> = alerts
        .iter()
        .map(|a| {
            let mut alert = a.json();
            alert["startsAt"] = json!("2026-12-01T06:00:00Z");
            alert
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": group_key,
        "status": "firing",
        "receiver": "breakwater",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "alerts": alerts,
    })
}

/// The invariant of promise 1: accepted firing alerts =
/// Σ occurrenceCount over non-storm CRs + Σ stormAlertCount over storm CRs.
pub fn accounted_alerts(remediations: &[Value]) -> u64 {
    remediations
        .iter()
        .map(|cr| {
            let spec = &cr["spec"];
            if spec["isStorm"].as_bool().unwrap_or(false) {
                spec["stormAlertCount"].as_u64().unwrap_or(0)
            } else {
                spec["deduplication"]["occurrenceCount"].as_u64().unwrap_or(0)
            }
        })
        .sum()
}
