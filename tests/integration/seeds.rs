//! The original team's Redis out-of-memory post-mortems (`shared/seeds/`),
//! made impossible: every key has a TTL, values are small and fixed-size, and
//! nothing is ever flushed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use breakwater_testkit::{RedisServer, RespConnection, assert_eventually};
use breakwater_tests::{Alert, TestGateway, accounted_alerts, webhook};
use futures::future::join_all;

async fn info_field(redis: &RedisServer, section: &str, field: &str) -> i64 {
    let info = redis.admin_command(&["INFO", section]).await;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from INFO {section}"))
}

/// Samples `used_memory` every 10 ms until stopped; returns the peak seen.
fn sample_peak_memory(port: u16, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let mut conn = RespConnection::connect(port).await.expect("sampler connects");
        let peak = AtomicI64::new(0);
        while !stop.load(Ordering::SeqCst) {
            let info = conn.command(&["INFO", "memory"]).await.expect("INFO").as_text().unwrap_or_default();
            if let Some(used) =
                info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok())
            {
                peak.fetch_max(used, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        peak.load(Ordering::SeqCst)
    })
}

/// One of the original suite's scenarios: 15 alerts in 3 webhooks — new
/// incidents, repeats, and alerts of one alertname over many pods (a storm).
fn scenario(s: usize) -> Vec<serde_json::Value> {
    let ns = format!("scenario-{s}");
    let unique: Vec<Alert> = (0..5).map(|i| Alert::firing(&format!("Unique{i}")).in_ns(&ns).pod("api-0")).collect();
    let repeat = Alert::firing("HighMemory").in_ns(&ns).pod("api-1");
    let pods: Vec<Alert> =
        (0..5).map(|p| Alert::firing("PodCrashLooping").in_ns(&ns).pod(&format!("p{}", p + 5 * (s % 2)))).collect();
    vec![webhook(&unique), webhook(&vec![repeat; 5]), webhook(&pods)]
}

/// Runs the 124 scenarios in parallel; returns the answers and the peak
/// `used_memory` seen meanwhile.
async fn run_original_suite(gw: &TestGateway, port: u16) -> (Vec<(u16, serde_json::Value)>, i64) {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_peak_memory(port, Arc::clone(&stop));
    let scenarios = (0..124).map(|s| async move {
        let mut answers = Vec::new();
        for body in scenario(s) {
            answers.push(gw.post_prometheus(&body).await);
        }
        answers
    });
    let answers = join_all(scenarios).await.into_iter().flatten().collect();
    stop.store(true, Ordering::SeqCst);
    (answers, sampler.await.expect("sampler"))
}

/// Waits until every key has expired; returns `used_memory` then, less the
/// client connections' buffers (how many pooled connections are open varies
/// with load, not with what is stored).
async fn drained_memory(redis: &RedisServer) -> i64 {
    assert_eventually!(
        Duration::from_secs(20),
        async { redis.admin_command(&["DBSIZE"]).await == "0" },
        "every key expires: dbsize {}",
        redis.admin_command(&["DBSIZE"]).await
    );
    info_field(redis, "memory", "used_memory").await - info_field(redis, "memory", "mem_clients_normal").await
}

/// Seeds 000 and 002: the original suite's load, 124 scenarios × 15 alerts in
/// parallel, never flushed, against one Redis with `maxmemory 16mb` shared by
/// ratelimit, dedup and storm: no OOM, no 503, nothing evicted, every key with
/// a TTL, and memory back to its baseline once the windows have passed — run
/// twice, so the second run shows nothing accumulates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_suite_load_fits_in_16mb_and_drains() {
    let redis = RedisServer::builder().maxmemory("16mb").maxmemory_policy("volatile-lru").start().await;
    let port = redis.port();
    // Short windows so the test can watch memory drain; the load is the same.
    let gw = TestGateway::start_with_redis(redis, |c| {
        c.dedup.window_secs = 2;
        c.storm.inactivity_secs = 1;
        c.storm.max_window_secs = 2;
        c.storm.count_ttl_secs = 2;
        // A shared 2-core CI machine must not turn slowness into degradation.
        c.edge.component_timeout_ms = 20_000;
        for r in [&mut c.dedup.redis, &mut c.storm.redis, &mut c.ratelimit.redis] {
            r.connect_timeout_ms = 20_000;
        }
    })
    .await;
    let redis = gw.redis.as_ref().expect("the gateway's redis");
    let mut baseline = None;
    for run in 1..=2 {
        let (answers, peak) = run_original_suite(&gw, port).await;
        let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
        assert!(statuses.iter().all(|s| *s == 201 || *s == 202), "run {run}: every webhook accepted: {statuses:?}");
        let accepted = answers.iter().map(|(_, a)| a["results"].as_array().map_or(0, Vec::len) as u64).sum::<u64>();
        assert_eq!(accepted, 124 * 15);
        assert_eq!(info_field(redis, "stats", "evicted_keys").await, 0, "nothing had to be evicted");
        assert_eq!(redis.keys_without_ttl("*").await, Vec::<String>::new(), "every key carries a TTL");
        assert!(peak < 16 * 1024 * 1024, "peak {peak} within maxmemory");
        assert_eq!(gw.degraded_calls().await, 0, "no component was degraded around");
        assert_eventually!(
            Duration::from_secs(10),
            async { accounted_alerts(&gw.remediations()) == accepted * run },
            "every accepted alert is on a CR: {} of {}",
            accounted_alerts(&gw.remediations()),
            accepted * run
        );
        let drained = drained_memory(redis).await;
        println!(
            "seeds 000/002 run {run}: {accepted} alerts, peak used_memory {peak} bytes ({:.2} MiB, server overhead included), {drained} bytes once drained",
            peak as f64 / 1_048_576.0
        );
        match baseline {
            None => baseline = Some(drained),
            Some(first) => assert!(drained <= first + 128 * 1024, "memory grew run over run: {first} then {drained}"),
        }
    }
}

/// Seed 003: a 100-alert storm across many pods keeps constant-size state —
/// a record, a capped resource set and a counter — never CR bodies.
#[tokio::test]
async fn hundred_alert_storm_state_stays_small() {
    let redis = RedisServer::builder().maxmemory("16mb").maxmemory_policy("volatile-lru").start().await;
    let gw = TestGateway::start_with_redis(redis, |_| {}).await;
    let redis = gw.redis.as_ref().expect("the gateway's redis");
    let pods: Vec<Alert> =
        (0..100).map(|p| Alert::firing("PodCrashLooping").in_ns("prod").pod(&format!("api-{p}"))).collect();
    for chunk in pods.chunks(25) {
        let (status, answer) = gw.post_prometheus(&webhook(chunk)).await;
        assert!(status == 201 || status == 202, "{answer}");
    }
    let keys = redis.admin_command(&["SCAN", "0", "MATCH", "*:storm:*", "COUNT", "1000"]).await;
    // The start-up write probe (one key, gone after a second) is not storm state.
    let storm_keys: Vec<&str> = keys.lines().skip(1).filter(|k| !k.ends_with(":probe")).collect();
    assert_eq!(storm_keys.len(), 3, "record, resource set and counter: {storm_keys:?}");
    let mut bytes = 0;
    for key in &storm_keys {
        bytes += redis.admin_command(&["MEMORY", "USAGE", key]).await.parse::<i64>().expect("MEMORY USAGE");
    }
    println!("seed 003: a 100-alert storm holds {bytes} bytes of storm state in {} keys", storm_keys.len());
    assert!(bytes < 16 * 1024, "storm state {bytes} bytes");
    assert_eventually!(
        Duration::from_secs(10),
        async { accounted_alerts(&gw.remediations()) == 100 },
        "100 alerts accounted for: {}",
        accounted_alerts(&gw.remediations())
    );
}

/// Seed 001: an operator (the test, as admin on its own server) lowers
/// `maxmemory` to 1 MB. Within one check period `/readyz` and the metrics say
/// so, naming the value found, the one expected and the fix; restoring it
/// clears them. (The services themselves cannot: see `acl.rs`.)
#[tokio::test]
async fn seed_001_lowered_maxmemory_shows_in_readyz_and_metrics_then_clears() {
    let redis = RedisServer::builder().maxmemory("64mb").maxmemory_policy("volatile-lru").start().await;
    let gw = TestGateway::start_with_redis(redis, |c| {
        for r in [&mut c.dedup.redis, &mut c.storm.redis, &mut c.ratelimit.redis] {
            r.budget_check_secs = 1;
        }
    })
    .await;
    let redis = gw.redis.as_ref().expect("redis");
    let http = reqwest::Client::new();
    let readyz = || async {
        let r: serde_json::Value =
            http.get(format!("{}/readyz", gw.url)).send().await.expect("readyz").json().await.expect("json");
        r
    };
    let drift = || async {
        let text = http.get(format!("{}/metrics", gw.url)).send().await.expect("metrics").text().await.expect("text");
        text.lines().find(|l| l.starts_with("breakwater_redis_budget_drift{component=\"dedup\"}")).map(str::to_owned)
    };
    assert_eventually!(
        Duration::from_secs(5),
        async { readyz().await["status"] == "ready" },
        "ready at first: {}",
        readyz().await
    );

    redis.admin_command(&["CONFIG", "SET", "maxmemory", "1mb"]).await;
    assert_eventually!(
        Duration::from_secs(3),
        async {
            let problems = readyz().await["components"]["dedup"]["problems"].to_string();
            problems.contains("maxmemory 1048576 bytes") && problems.contains("CONFIG SET maxmemory 67108864")
        },
        "drift in /readyz: {}",
        readyz().await
    );
    assert_eventually!(
        Duration::from_secs(3),
        async { drift().await.is_some_and(|l| l.ends_with(" 1")) },
        "drift metric: {:?}",
        drift().await
    );

    redis.admin_command(&["CONFIG", "SET", "maxmemory", "64mb"]).await;
    assert_eventually!(
        Duration::from_secs(3),
        async { readyz().await["status"] == "ready" },
        "cleared: {}",
        readyz().await
    );
    assert_eventually!(
        Duration::from_secs(3),
        async { drift().await.is_some_and(|l| l.ends_with(" 0")) },
        "metric cleared: {:?}",
        drift().await
    );
}
