//! Replicas: two edges in front of two replicas of each gRPC component, on one Redis, with
//! both crd-writers writing to one (fake) Kubernetes API server, as on a cluster. Each edge
//! lists both replicas of a component (one of dedup's by host name); its calls go round-robin
//! over them. Under load, one replica of each component goes away as Kubernetes stops a pod
//! (SIGTERM: it refuses new calls and drains those in flight), one after the other. The
//! edges send their calls on to the remaining replica, so no webhook is answered 5xx while a
//! crd-writer replica is reachable; every firing alert answered 2xx is counted exactly once
//! over all CRs, and every incident has exactly one CR.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::{Component, cr_count};
use breakwater_testkit::{FakeApiServer, RedisServer, unique_key_root};
use serde_json::{Value, json};

/// Concurrent Alertmanager-like senders, alternating between the two edges.
const SENDERS: usize = 8;
/// Alerts per notification, all distinct incidents.
const ALERTS_PER_NOTIFICATION: usize = 4;
/// Incidents: namespaces × alertnames × pods (3 pods per group: never a storm).
const NAMESPACES: usize = 10;
const ALERT_NAMES: [&str; 3] = ["HighMemory", "DiskPressure", "HighLatency"];
const PODS: usize = 3;
/// Load before the first replica goes away, between two, and after the last.
const HEALTHY_FOR: Duration = Duration::from_millis(1_500);
const BETWEEN: Duration = Duration::from_millis(1_000);
const TAIL: Duration = Duration::from_millis(2_000);
/// The order in which one replica of each component goes away.
const STOP_ORDER: [&str; 4] = ["ratelimit", "dedup", "storm", "crd-writer"];

/// One notification and every answer it got.
struct Notification {
    /// Its alerts, as `namespace/alertname/pod`.
    incidents: Vec<String>,
    statuses: Vec<Result<u16, String>>,
}

/// Alertmanager's fingerprint of a label set: an opaque 16-hex-digit hash (FNV-1a here).
fn am_fingerprint(key: &str) -> String {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

/// Notification `seq` of `sender`: distinct incidents picked by a fixed stride, each alert a
/// delivery of its own (its group key is the notification's).
fn notification(sender: usize, seq: usize) -> (Value, Vec<String>) {
    let incidents = NAMESPACES * ALERT_NAMES.len() * PODS;
    let mut keys = Vec::new();
    let alerts: Vec<Value> = (0..ALERTS_PER_NOTIFICATION)
        .map(|k| {
            // 29 and the incident count (90) are coprime, so the 4 picks are distinct.
            let n = (sender * 7 + seq * 13 + k * 29) % incidents;
            let (ns, name, pod) = (
                format!("replicas-{}", n % NAMESPACES),
                ALERT_NAMES[(n / NAMESPACES) % ALERT_NAMES.len()],
                format!("pod-{}", n / (NAMESPACES * ALERT_NAMES.len())),
            );
            let key = format!("{ns}/{name}/{pod}");
            keys.push(key.clone());
            json!({
                "status": "firing",
                "labels": {"alertname": name, "namespace": ns, "pod": pod, "severity": "critical"},
                "annotations": {"summary": format!("{pod} is in trouble")},
                "startsAt": "2026-12-01T06:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": am_fingerprint(&key),
            })
        })
        .collect();
    let body = json!({
        "version": "4", "groupKey": format!("{{}}:{{sender=\"{sender}\", seq=\"{seq}\"}}"),
        "status": "firing", "receiver": "breakwater", "externalURL": "http://alertmanager.local",
        "alerts": alerts,
    });
    (body, keys)
}

/// Sends `body` until it gets a 2xx (at most 30 s), as Alertmanager retries a 5xx.
async fn deliver(client: &reqwest::Client, url: &str, body: &Value) -> Vec<Result<u16, String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut statuses = Vec::new();
    loop {
        let status = match client.post(url).json(body).send().await {
            Ok(response) => Ok(response.status().as_u16()),
            Err(err) => Err(format!("{err:?}")),
        };
        let done = status.as_ref().is_ok_and(|s| (200..300).contains(s));
        statuses.push(status);
        if done || Instant::now() >= deadline {
            return statuses;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of `metric` summed over every series whose labels contain `with`.
async fn metric_sum(client: &reqwest::Client, url: &str, metric: &str, with: &str) -> f64 {
    let text = client.get(url).send().await.expect("metrics").text().await.expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(metric) && l.contains(with))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Two edges in front of two replicas of each component, on one Redis and one API server.
struct Cluster {
    replicas: BTreeMap<&'static str, Vec<Component>>,
    edges: [Component; 2],
    client: reqwest::Client,
    api: FakeApiServer,
    _redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(test: &str) -> Self {
        let redis = RedisServer::builder().maxmemory("256mb").maxmemory_policy("volatile-lru").start().await;
        let api = FakeApiServer::start().await;
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = unique_key_root(test);
        let mut env: Vec<(String, String)> = vec![
            ("RUST_LOG".into(), "warn".into()),
            ("KUBECONFIG".into(), api.write_kubeconfig(dir.path())),
            ("BREAKWATER_CRD_WRITER__SINK".into(), "kubernetes".into()),
            ("BREAKWATER_CRD_WRITER__FLUSH_INTERVAL_MS".into(), "100".into()),
            // Far above this load: ratelimit never refuses, in the service or in the edge's fallback.
            ("BREAKWATER_RATELIMIT__SIGNALS_PER_SECOND".into(), "100000".into()),
            ("BREAKWATER_RATELIMIT__BURST".into(), "1000000".into()),
        ];
        for section in ["RATELIMIT", "DEDUP", "STORM"] {
            env.push((format!("BREAKWATER_{section}__STORE"), "redis".into()));
            env.push((format!("BREAKWATER_{section}__REDIS__URL"), redis.url()));
            env.push((format!("BREAKWATER_{section}__REDIS__KEY_ROOT"), root.clone()));
        }
        let mut replicas: BTreeMap<&str, Vec<Component>> = BTreeMap::new();
        for name in STOP_ORDER {
            for index in 0..2 {
                let mut own = env.clone();
                // Each crd-writer journals its pending counts in a state directory of its own.
                own.push(("BREAKWATER_EMBEDDED__DIR".into(), format!("{}/state-{name}-{index}", dir.path().display())));
                let metrics = ["--metrics-listen".to_owned(), "127.0.0.1:0".to_owned()];
                replicas.entry(name).or_default().push(Component::start(name, &own, &metrics).await);
            }
        }
        let mut edge_env = env.clone();
        for (name, list) in &replicas {
            let urls: Vec<String> = list
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    // One of dedup's by host name, looked up like a headless Service.
                    let addr =
                        if *name == "dedup" && i == 0 { c.addr().replace("127.0.0.1", "localhost") } else { c.addr() };
                    format!("http://{addr}")
                })
                .collect();
            let key = name.replace('-', "_").to_uppercase();
            edge_env.push((format!("BREAKWATER_EDGE__COMPONENTS__{key}"), urls.join(",")));
        }
        edge_env.push(("BREAKWATER_EDGE__COMPONENTS__RESOLVE_INTERVAL_MS".into(), "500".into()));
        let edges = [Component::start("edge", &edge_env, &[]).await, Component::start("edge", &edge_env, &[]).await];
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
        for edge in &edges {
            let start = Instant::now();
            loop {
                let ready = client.get(format!("http://{}/readyz", edge.addr())).send().await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(15), "edge {} not ready within 15 s", edge.addr());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Self { replicas, edges, client, api, _redis: redis, _dir: dir }
    }

    /// Runs the senders while `faults` runs, then `TAIL` longer; every notification sent.
    async fn under_load(&mut self, faults: impl AsyncFnOnce(&mut Self)) -> Vec<Notification> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut senders = Vec::new();
        for sender in 0..SENDERS {
            let url = format!("http://{}/api/v1/signals/prometheus", self.edges[sender % 2].addr());
            let (stop, client) = (stop.clone(), self.client.clone());
            senders.push(tokio::spawn(async move {
                let mut sent = Vec::new();
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (body, incidents) = notification(sender, seq);
                    sent.push(Notification { incidents, statuses: deliver(&client, &url, &body).await });
                    seq += 1;
                }
                sent
            }));
        }
        tokio::time::sleep(HEALTHY_FOR).await;
        // Every replica took calls before any went away: the edges spread them.
        for (name, list) in &self.replicas {
            for replica in list {
                let url = replica.metrics_url().expect("metrics address");
                let served =
                    metric_sum(&self.client, &url, "breakwater_grpc_server_requests_total", "code=\"Ok\"").await;
                eprintln!("{name} at {}: {served} calls answered in the first {HEALTHY_FOR:?}", replica.addr());
                assert!(served > 0.0, "{name} at {} took calls", replica.addr());
            }
        }
        faults(self).await;
        tokio::time::sleep(TAIL).await;
        stop.store(true, Ordering::Relaxed);
        let mut notifications = Vec::new();
        for sender in senders {
            notifications.extend(sender.await.expect("sender"));
        }
        notifications
    }

    /// Calls the edges sent on to another replica, per edge.
    async fn retries(&self) -> Vec<f64> {
        let mut out = Vec::new();
        for edge in &self.edges {
            let url = format!("http://{}/metrics", edge.addr());
            out.push(metric_sum(&self.client, &url, "breakwater_edge_component_retries_total", "").await);
        }
        out
    }

    /// The causes the edges logged for the webhooks they failed.
    fn failure_causes(&self) -> Vec<String> {
        self.edges
            .iter()
            .flat_map(Component::stderr)
            .filter(|line| line.contains("\"request failed\""))
            .map(|line| {
                serde_json::from_str::<Value>(&line)
                    .map_or(line.clone(), |v| v["cause"].as_str().unwrap_or("").to_owned())
            })
            .collect()
    }

    /// Waits until the CRs count `expected` alerts (20 s at most); asserts conservation and one
    /// CR per incident sent.
    async fn check_counts(&self, notifications: &[Notification]) {
        let expected: u64 = notifications.iter().map(|n| n.incidents.len() as u64).sum();
        let start = Instant::now();
        let (mut accounted, mut crs) = (0, Vec::new());
        while start.elapsed() < Duration::from_secs(20) {
            crs = self.api.objects("remediationrequests");
            accounted = crs.iter().map(cr_count).sum::<u64>();
            if accounted == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut per_incident: BTreeMap<String, usize> = BTreeMap::new();
        for cr in &crs {
            *per_incident
                .entry(cr["spec"]["signalFingerprint"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
        let sent_incidents: std::collections::BTreeSet<&str> =
            notifications.iter().flat_map(|n| n.incidents.iter().map(String::as_str)).collect();
        eprintln!("{} CRs for {} incidents; accounted {accounted} of {expected}", crs.len(), per_incident.len());
        assert_eq!(accounted, expected, "every alert answered 2xx is counted exactly once over all CRs");
        assert!(per_incident.values().all(|&n| n == 1), "one CR per incident: {per_incident:?}");
        assert_eq!(per_incident.len(), sent_incidents.len(), "a CR for every incident sent");
    }
}

fn is_2xx(status: &Result<u16, String>) -> bool {
    status.as_ref().is_ok_and(|s| (200..300).contains(s))
}

/// Every notification's final answer was 2xx; the other answers on the way.
fn answers(notifications: &[Notification]) -> Vec<&Result<u16, String>> {
    let unanswered = notifications.iter().filter(|n| !n.statuses.iter().any(is_2xx)).count();
    assert_eq!(unanswered, 0, "every notification got its 2xx");
    assert!(notifications.len() >= 100, "the load was real: {} notifications", notifications.len());
    notifications.iter().flat_map(|n| &n.statuses).filter(|s| !is_2xx(s)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edges_spread_calls_over_replicas_and_survive_one_of_each_going_away_under_load() {
    let mut cluster = Cluster::start("replicas-sigterm").await;
    let mut gone = Vec::new();
    let notifications = cluster
        .under_load(async |cluster: &mut Cluster| {
            for name in STOP_ORDER {
                let list = cluster.replicas.get_mut(name).expect("replicas");
                let started = Instant::now();
                list[1].terminate().await;
                gone.push(list.remove(1));
                eprintln!("{name}: one replica stopped (SIGTERM, exited 0 after {:?})", started.elapsed());
                tokio::time::sleep(BETWEEN).await;
            }
        })
        .await;
    let non_2xx = answers(&notifications);
    let retries = cluster.retries().await;
    let expected: usize = notifications.iter().map(|n| n.incidents.len()).sum();
    eprintln!(
        "SIGTERM: {} notifications ({expected} alerts) sent to 2 edges, all answered 2xx; {} other answers: {:?} \
         (causes {:?}); calls sent on to another replica: {retries:?}",
        notifications.len(),
        non_2xx.len(),
        non_2xx.iter().take(10).collect::<Vec<_>>(),
        cluster.failure_causes()
    );
    assert!(non_2xx.is_empty(), "no webhook answered anything but 2xx while a replica of each component ran");
    cluster.check_counts(&notifications).await;
    assert!(retries.iter().sum::<f64>() > 0.0, "calls were sent on to the remaining replicas: {retries:?}");
}

/// A replica killed with SIGKILL takes the calls it had with it. Those that are safe to repeat
/// go to the other replica (dedup's CheckSignals too: every signal here has a delivery identity);
/// a webhook whose storm DetectStorms call died with the replica is answered 503 (it may have
/// been applied), and its retry counts once. crd-writer's killed
/// replica comes back on its journal, with the counts it had answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_load_costs_at_most_the_webhooks_it_had_in_flight() {
    let mut cluster = Cluster::start("replicas-sigkill").await;
    let notifications = cluster
        .under_load(async |cluster: &mut Cluster| {
            for name in STOP_ORDER {
                let list = cluster.replicas.get_mut(name).expect("replicas");
                list[1].kill_9().await;
                eprintln!("{name}: one replica killed (SIGKILL)");
                tokio::time::sleep(BETWEEN).await;
            }
            // Its journal holds the counts it answered and had not written yet.
            cluster.replicas.get_mut("crd-writer").expect("replicas")[1].restart().await;
        })
        .await;
    let non_2xx = answers(&notifications);
    let causes = cluster.failure_causes();
    let expected: usize = notifications.iter().map(|n| n.incidents.len()).sum();
    eprintln!(
        "SIGKILL: {} notifications ({expected} alerts) sent to 2 edges, all answered 2xx in the end; {} other \
         answers: {:?}; causes: {causes:?}; calls sent on to another replica: {:?}",
        notifications.len(),
        non_2xx.len(),
        non_2xx.iter().take(10).collect::<Vec<_>>(),
        cluster.retries().await
    );
    assert!(
        causes.iter().all(|c| c.contains("failed mid-call")),
        "the only failures are calls that died with their replica: {causes:?}"
    );
    cluster.check_counts(&notifications).await;
}
