//! Full-path throughput in split mode (edge + four gRPC components + one
//! Redis), with span export off and on: alerts per second, latency
//! percentiles and the edge's resident memory.
//!
//! `cargo bench -p breakwater --bench throughput` (release build). Each
//! figure is the median of three runs measured in one invocation, so the
//! off/on ratio is comparable even on a shared, noisy machine.

use std::time::{Duration, Instant};

use breakwater_testkit::{BreakwaterProcess as Process, OtlpReceiver, RedisServer, unique_key_root};
use serde_json::{Value, json};

const ALERTS_PER_WEBHOOK: usize = 50;
const CONCURRENCY: usize = 16;
const RUN: Duration = Duration::from_secs(4);
const RUNS: usize = 3;

struct Split {
    components: Vec<(&'static str, Process)>,
    _dir: tempfile::TempDir,
    edge: Process,
}

async fn split(redis: &RedisServer, otlp: Option<&str>) -> Split {
    let key_root = unique_key_root("bench");
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut common = vec![
        ("RUST_LOG".to_owned(), "warn".to_owned()),
        ("BREAKWATER_RATELIMIT__SIGNALS_PER_SECOND".to_owned(), "1000000000".to_owned()),
        ("BREAKWATER_RATELIMIT__BURST".to_owned(), "4000000000".to_owned()),
        ("BREAKWATER_CRD_WRITER__DIRECTORY".to_owned(), dir.path().to_string_lossy().into_owned()),
    ];
    for section in ["RATELIMIT", "DEDUP", "STORM"] {
        common.push((format!("BREAKWATER_{section}__STORE"), "redis".to_owned()));
        common.push((format!("BREAKWATER_{section}__REDIS__URL"), redis.url()));
        common.push((format!("BREAKWATER_{section}__REDIS__KEY_ROOT"), key_root.clone()));
    }
    if let Some(endpoint) = otlp {
        common.push(("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint.to_owned()));
    }
    let binary = env!("CARGO_BIN_EXE_breakwater");
    let mut components = Vec::new();
    let mut urls = Vec::new();
    for (name, key) in
        [("ratelimit", "RATELIMIT"), ("dedup", "DEDUP"), ("storm", "STORM"), ("crd-writer", "CRD_WRITER")]
    {
        let process = Process::start(binary, &[name, "--listen", "127.0.0.1:0"], &common).await;
        urls.push((format!("BREAKWATER_EDGE__COMPONENTS__{key}"), process.url()));
        components.push((name, process));
    }
    let mut env = common.clone();
    env.extend(urls);
    let edge = Process::start(binary, &["edge", "--listen", "127.0.0.1:0"], &env).await;
    Split { components, _dir: dir, edge }
}

/// 50 alerts of distinct names, each on its own pod: no storm, so every
/// repeat goes the whole way (ratelimit, dedup, storm's repeat check, a coalesced count).
fn webhook(batch: usize) -> Value {
    let alerts: Vec<Value> = (0..ALERTS_PER_WEBHOOK)
        .map(|i| {
            json!({"status": "firing", "labels": {
                "alertname": format!("Bench{batch}x{i}"), "namespace": "bench", "pod": format!("p{i}")}})
        })
        .collect();
    json!({ "alerts": alerts })
}

struct Measured {
    alerts_per_second: f64,
    alerts: usize,
    p50: Duration,
    p99: Duration,
}

/// CPU seconds a process has used (user + system).
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.unwrap_or(0))).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Redis's own CPU seconds, from INFO cpu.
async fn redis_cpu_seconds(redis: &RedisServer) -> f64 {
    let info = redis.admin_command(&["INFO", "cpu"]).await;
    info.lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split_once(':').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
        .sum()
}

/// Repeats of already-open incidents from `CONCURRENCY` senders for `RUN`.
async fn drive(edge: &str) -> Measured {
    let url = format!("{edge}/api/v1/signals/prometheus");
    let client = reqwest::Client::new();
    let bodies: Vec<Vec<u8>> = (0..CONCURRENCY).map(|b| serde_json::to_vec(&webhook(b)).expect("json")).collect();
    // Open the incidents first: what follows is repeat traffic.
    for body in &bodies {
        let status = client.post(&url).header("content-type", "application/json").body(body.clone()).send().await;
        assert!(status.is_ok_and(|r| r.status().is_success()), "warm-up request failed");
    }
    let deadline = Instant::now() + RUN;
    let start = Instant::now();
    // Collected, so all senders run at once.
    let workers: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let response =
                        client.post(&url).header("content-type", "application/json").body(body.clone()).send().await;
                    assert!(response.is_ok_and(|r| r.status().is_success()), "request failed under load");
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.expect("worker"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    let alerts = latencies.len() * ALERTS_PER_WEBHOOK;
    Measured { alerts_per_second: alerts as f64 / elapsed, alerts, p50: at(0.5), p99: at(0.99) }
}

fn rss_kib(pid: Option<u32>) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.unwrap_or(0))).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let redis = RedisServer::start().await;
    let receiver = OtlpReceiver::start().await;
    println!(
        "split mode, Redis, {ALERTS_PER_WEBHOOK} repeat alerts per webhook, {CONCURRENCY} senders, {RUNS} × {RUN:?}"
    );
    println!("{:<22} {:>12} {:>10} {:>10} {:>14}", "spans", "alerts/s", "p50 ms", "p99 ms", "edge RSS MiB");
    let mut medians = Vec::new();
    // Interleaved, so drift of the shared machine hits both alike.
    // CPU milliseconds per 1000 alerts, per process, with export off.
    let mut cpu: Vec<(String, Vec<f64>)> = Vec::new();
    let mut runs: Vec<(&str, Vec<Measured>, u64)> =
        vec![("not exported", Vec::new(), 0), ("exported (OTLP)", Vec::new(), 0)];
    for _ in 0..RUNS {
        for (label, measured, rss) in &mut runs {
            let otlp = (*label != "not exported").then(|| receiver.endpoint());
            let gateway = split(&redis, otlp.as_deref()).await;
            let mut processes: Vec<(String, Option<u32>)> =
                gateway.components.iter().map(|(name, p)| ((*name).to_owned(), p.child.id())).collect();
            processes.push(("edge".to_owned(), gateway.edge.child.id()));
            let before: Vec<f64> = processes.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
            let redis_before = redis_cpu_seconds(&redis).await;
            let run = drive(&gateway.edge.url()).await;
            if otlp.is_none() {
                let per_k = |seconds: f64| seconds * 1e6 / run.alerts as f64;
                let mut used: Vec<(String, f64)> = processes
                    .iter()
                    .zip(&before)
                    .map(|((name, pid), b)| (name.clone(), per_k(cpu_seconds(*pid) - b)))
                    .collect();
                used.push(("redis-server".to_owned(), per_k(redis_cpu_seconds(&redis).await - redis_before)));
                for (name, ms) in used {
                    match cpu.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, all)) => all.push(ms),
                        None => cpu.push((name, vec![ms])),
                    }
                }
            }
            measured.push(run);
            *rss = (*rss).max(rss_kib(gateway.edge.child.id()));
        }
    }
    for (label, measured, rss) in &runs {
        let rate = median(measured.iter().map(|m| m.alerts_per_second).collect());
        let p50 = median(measured.iter().map(|m| m.p50.as_secs_f64() * 1e3).collect());
        let p99 = median(measured.iter().map(|m| m.p99.as_secs_f64() * 1e3).collect());
        println!("{label:<22} {rate:>12.0} {p50:>10.2} {p99:>10.2} {:>14.1}", *rss as f64 / 1024.0);
        medians.push(rate);
    }
    println!("exported / not exported: {:.2}", medians[1] / medians[0]);
    println!("CPU ms per 1000 alerts, export off (includes the warm-up):");
    for (name, all) in cpu {
        println!("  {name:<14} {:>8.1}", median(all));
    }
    println!("spans received: {}", receiver.spans().len());
}
