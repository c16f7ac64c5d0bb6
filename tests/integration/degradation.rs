//! Promise 4, the degradation table: a Redis problem degrades one feature,
//! never the gateway. Reference topology: one redis-server per service.

use std::time::Duration;

use breakwater_keyspace::RedisConfig;
use breakwater_testkit::{RedisServer, RespValue, assert_eventually};
use breakwater_tests::{Alert, TestGateway, accounted_alerts, webhook};
use serde_json::Value;

struct Topology {
    dedup: RedisServer,
    storm: RedisServer,
    ratelimit: RedisServer,
    gw: TestGateway,
}

/// A Redis set up as the reference topology wants it: room for a 64 MiB
/// budget, and a volatile-* policy, so the drift guard has nothing to say.
async fn sound_redis() -> RedisServer {
    RedisServer::builder().maxmemory("64mb").maxmemory_policy("volatile-lru").start().await
}

async fn topology(dedup: RedisServer, adjust: impl FnOnce(&mut breakwater::Config)) -> Topology {
    let (storm, ratelimit) = (sound_redis().await, sound_redis().await);
    // Checked every second, so recovery shows within the test's patience.
    let on = |s: &RedisServer| RedisConfig {
        url: s.url(),
        key_root: "bw".into(),
        budget_check_secs: 1,
        ..RedisConfig::default()
    };
    let (d, st, rl) = (on(&dedup), on(&storm), on(&ratelimit));
    let gw = TestGateway::start_with_redis(RedisServer::start().await, |c| {
        c.dedup.redis = d;
        c.storm.redis = st;
        c.ratelimit.redis = rl;
        adjust(c);
    })
    .await;
    Topology { dedup, storm, ratelimit, gw }
}

async fn readyz(gw: &TestGateway) -> (u16, Value) {
    let r = reqwest::get(format!("{}/readyz", gw.url)).await.expect("readyz");
    (r.status().as_u16(), r.json().await.expect("json"))
}

fn problems_of(ready: &Value, component: &str) -> Vec<String> {
    ready["components"][component]["problems"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn crs_for(gw: &TestGateway, fingerprint: &Value) -> usize {
    gw.remediations().iter().filter(|cr| cr["spec"]["signalFingerprint"] == *fingerprint).count()
}

/// The CRs come to count exactly the `accepted` alerts (crd-writer flushes within 50 ms).
async fn every_alert_counted_once(gw: &TestGateway, accepted: u64) {
    assert_eventually!(
        Duration::from_secs(5),
        async { accounted_alerts(&gw.remediations()) == accepted },
        "accounted {} of {accepted}: {:#?}",
        accounted_alerts(&gw.remediations()),
        gw.remediations()
    );
}

/// Seven distinct pods of one alertname: a storm when storm works.
fn storm_burst(ns: &str) -> Value {
    let pods: Vec<Alert> = (0..7).map(|p| Alert::firing("PodCrashLooping").in_ns(ns).pod(&format!("p{p}"))).collect();
    webhook(&pods)
}

/// Dedup's Redis killed, then back: the edge answers 201/202 throughout, a
/// repeated alert lands on its existing CR (no second CR), storm and
/// ratelimit are unaffected, and recovery needs no restart.
#[tokio::test]
async fn dedup_redis_killed_then_back() {
    let mut t = topology(sound_redis().await, |_| {}).await;
    let alert = webhook(&[Alert::firing("HighMemory").in_ns("prod").pod("api-1")]);
    let (status, first) = t.gw.post_prometheus(&alert).await;
    assert_eq!(status, 201, "{first}");
    let (name, fingerprint) =
        (first["results"][0]["remediationRequestName"].clone(), first["results"][0]["fingerprint"].clone());

    t.dedup.kill().await;
    let (status, again) = t.gw.post_prometheus(&alert).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["results"][0]["outcome"], "duplicate");
    assert_eq!(again["results"][0]["remediationRequestName"], name, "counted on the CR that exists");
    let (status, other) = t.gw.post_prometheus(&webhook(&[Alert::firing("DiskFull").in_ns("prod").pod("db-0")])).await;
    assert_eq!(status, 201, "{other}");
    let (status, burst) = t.gw.post_prometheus(&storm_burst("prod")).await;
    assert!(status == 201, "{burst}");
    assert_eq!(burst["results"][5]["outcome"], "storm_created", "storm unaffected: {burst}");
    let (code, ready) = readyz(&t.gw).await;
    assert_eq!((code, ready["status"].as_str()), (200, Some("degraded")), "{ready}");
    assert!(problems_of(&ready, "dedup").iter().any(|p| p.contains("dedup's Redis failed")), "{ready}");
    assert!(problems_of(&ready, "storm").is_empty() && problems_of(&ready, "ratelimit").is_empty(), "{ready}");

    t.dedup.restart().await;
    let (status, back) = t.gw.post_prometheus(&alert).await;
    assert_eq!(status, 202, "{back}");
    assert_eq!(back["results"][0]["remediationRequestName"], name, "no second CR after recovery either");
    // Dedup lost its state with its Redis, and counts the incident from 1 again: its next
    // repeats still land on the CR found, and add to what it counted before.
    for _ in 0..2 {
        let (status, repeat) = t.gw.post_prometheus(&alert).await;
        assert_eq!(status, 202, "{repeat}");
        assert_eq!(repeat["results"][0]["remediationRequestName"], name, "{repeat}");
    }
    assert_eventually!(
        Duration::from_secs(5),
        async { problems_of(&readyz(&t.gw).await.1, "dedup").is_empty() },
        "dedup recovers by itself: {}",
        readyz(&t.gw).await.1
    );
    assert_eq!(crs_for(&t.gw, &fingerprint), 1);
    // Every alert answered 2xx is counted once: 1 + 1 while down + 3 after, plus the others.
    let accepted = 5 + 1 + 7;
    every_alert_counted_once(&t.gw, accepted).await;
}

/// Dedup's Redis full with `noeviction` (the seeds' OOM): the same as down,
/// and the problem says it is out of memory.
#[tokio::test]
async fn dedup_redis_out_of_memory() {
    let full = RedisServer::builder().maxmemory("2mb").maxmemory_policy("noeviction").start().await;
    let t = topology(full, |c| c.dedup.redis.memory_budget_bytes = 1024 * 1024).await;
    let alert = webhook(&[Alert::firing("HighMemory").in_ns("prod").pod("api-1")]);
    let (status, first) = t.gw.post_prometheus(&alert).await;
    assert_eq!(status, 201, "{first}");
    let name = first["results"][0]["remediationRequestName"].clone();
    // An operator's mistake fills it: keys without TTL until writes are refused.
    fill(&t.dedup).await;
    let (status, again) = t.gw.post_prometheus(&alert).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["results"][0]["remediationRequestName"], name);
    let (status, _) = t.gw.post_prometheus(&storm_burst("prod")).await;
    assert_eq!(status, 201);
    // Unique alerts and their repeats while full: never a 503, one CR per incident, and
    // every alert counted once (the seeds' failure was a full Redis answering 503 to all).
    let mut accepted = 1 + 1 + 7;
    for round in 0..3 {
        let alerts: Vec<Alert> =
            (0..20).map(|i| Alert::firing(&format!("DiskFull{i}")).in_ns("prod").pod("db-0")).collect();
        let (status, answer) = t.gw.post_prometheus(&webhook(&alerts)).await;
        assert!(status == 201 || status == 202, "round {round}: {answer}");
        accepted += 20;
    }
    assert_eventually!(
        Duration::from_secs(10),
        async { accounted_alerts(&t.gw.remediations()) == accepted },
        "accounted {} of {accepted}",
        accounted_alerts(&t.gw.remediations())
    );
    let disk_full =
        t.gw.remediations()
            .iter()
            .filter(|cr| cr["spec"]["signalName"].as_str().is_some_and(|n| n.starts_with("DiskFull")))
            .count();
    assert_eq!(disk_full, 20, "one CR per incident");
    let ready = readyz(&t.gw).await.1;
    let dedup = problems_of(&ready, "dedup");
    assert!(dedup.iter().any(|p| p.contains("(oom)")), "{ready}");
    assert!(
        dedup.iter().any(|p| p.contains("maxmemory-policy noeviction")),
        "the drift guard names the cause: {ready}"
    );
    assert!(problems_of(&ready, "storm").is_empty() && problems_of(&ready, "ratelimit").is_empty(), "{ready}");
}

/// Fills a Redis whose policy is `noeviction` until it refuses writes (OOM),
/// then, as its operator, lowers `maxmemory` under what it holds, so it stays
/// refusing whatever buffers it frees meanwhile (the test's own server).
async fn fill(redis: &RedisServer) {
    let mut admin = redis.admin_connection().await;
    let blob = "x".repeat(1024);
    for i in 0.. {
        if let RespValue::Error(e) = admin.command(&["SET", &format!("junk:{i}"), &blob]).await.expect("SET") {
            assert!(e.starts_with("OOM"), "{e}");
            break;
        }
    }
    redis.admin_command(&["CONFIG", "SET", "maxmemory", "1mb"]).await;
}

/// Storm's and ratelimit's Redis full (OOM): storms off, limiting in-process,
/// every alert still lands.
#[tokio::test]
async fn storm_and_ratelimit_redis_out_of_memory() {
    let full = || RedisServer::builder().maxmemory("2mb").maxmemory_policy("noeviction").start();
    let (storm, ratelimit) = (full().await, full().await);
    let on = |s: &RedisServer| RedisConfig {
        url: s.url(),
        key_root: "bw".into(),
        memory_budget_bytes: 1 << 20,
        ..RedisConfig::default()
    };
    let (st, rl) = (on(&storm), on(&ratelimit));
    let gw = TestGateway::start_with_redis(sound_redis().await, |c| {
        c.storm.redis = st;
        c.ratelimit.redis = rl;
    })
    .await;
    fill(&storm).await;
    fill(&ratelimit).await;
    let (status, burst) = gw.post_prometheus(&storm_burst("prod")).await;
    assert_eq!(status, 201, "{burst}");
    let outcomes: Vec<&str> =
        burst["results"].as_array().into_iter().flatten().filter_map(|r| r["outcome"].as_str()).collect();
    assert_eq!(outcomes, vec!["created"; 7]);
    let ready = readyz(&gw).await.1;
    assert!(problems_of(&ready, "storm").iter().any(|p| p.contains("(oom)")), "{ready}");
    assert!(
        problems_of(&ready, "ratelimit").iter().any(|p| p.contains("(oom)") && p.contains("in-process limiter")),
        "{ready}"
    );
}

/// Storm's Redis killed: no storm detection, every alert gets its own CR, and
/// storms come back with Redis.
#[tokio::test]
async fn storm_redis_killed_then_back() {
    let mut t = topology(sound_redis().await, |_| {}).await;
    t.storm.kill().await;
    let (status, burst) = t.gw.post_prometheus(&storm_burst("prod")).await;
    assert_eq!(status, 201, "{burst}");
    let outcomes: Vec<&str> =
        burst["results"].as_array().into_iter().flatten().filter_map(|r| r["outcome"].as_str()).collect();
    assert_eq!(outcomes, vec!["created"; 7], "every alert its own CR");
    let ready = readyz(&t.gw).await.1;
    assert!(problems_of(&ready, "storm").iter().any(|p| p.contains("storm's Redis failed")), "{ready}");
    t.storm.restart().await;
    let (status, burst) = t.gw.post_prometheus(&storm_burst("dev")).await;
    assert_eq!(status, 201);
    assert_eq!(burst["results"][5]["outcome"], "storm_created", "{burst}");
    assert_eventually!(
        Duration::from_secs(5),
        async { problems_of(&readyz(&t.gw).await.1, "storm").is_empty() },
        "storm recovers by itself"
    );
}

/// Storm's Redis killed after a storm opened, then back empty: repeats of the alerts folded
/// into it are still counted on the storm CR (carried apart from the storm service's own
/// count), and every alert answered 2xx is counted once.
#[tokio::test]
async fn storm_alert_repeats_count_while_storm_is_down() {
    let mut t = topology(sound_redis().await, |_| {}).await;
    let (status, burst) = t.gw.post_prometheus(&storm_burst("prod")).await;
    assert_eq!(status, 201, "{burst}");
    assert_eq!(burst["results"][5]["outcome"], "storm_created", "{burst}");
    let storm = burst["results"][5]["remediationRequestName"].clone();
    t.storm.kill().await;
    let repeat = webhook(&[Alert::firing("PodCrashLooping").in_ns("prod").pod("p6")]);
    for _ in 0..3 {
        let (status, answer) = t.gw.post_prometheus(&repeat).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["results"][0]["outcome"], "storm_aggregated", "{answer}");
        assert_eq!(answer["results"][0]["remediationRequestName"], storm, "{answer}");
    }
    // Back, but its state is gone: the storm's counter is not restarted from 0 behind the
    // CR's count; the repeats are still added to the CR.
    t.storm.restart().await;
    for _ in 0..2 {
        let (status, answer) = t.gw.post_prometheus(&repeat).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["results"][0]["remediationRequestName"], storm, "{answer}");
    }
    let accepted = 7 + 3 + 2;
    every_alert_counted_once(&t.gw, accepted).await;
}

/// Ratelimit's Redis killed: the in-process limiter takes over (it still
/// limits), and Redis takes back over when it returns.
#[tokio::test]
async fn ratelimit_redis_killed_then_back() {
    let mut t = topology(sound_redis().await, |c| {
        c.ratelimit.signals_per_second = 1.0;
        c.ratelimit.burst = 5;
    })
    .await;
    t.ratelimit.kill().await;
    let five: Vec<Alert> = (0..5).map(|i| Alert::firing("A").in_ns("prod").pod(&format!("p{i}"))).collect();
    let (status, answer) = t.gw.post_prometheus(&webhook(&five)).await;
    assert_eq!(status, 201, "{answer}");
    // The service's fallback limiter answers while the service is reachable; if a
    // slow call times out, the edge's own fallback answers instead. Each has a burst
    // of 5 at 1 signal/s, so within three webhooks one of them refuses.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(t.gw.post_prometheus(&webhook(&five)).await.0);
        if statuses.last() == Some(&503) {
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&503), "the in-process limiter limits (503: the sender retries): {statuses:?}");
    let ready = readyz(&t.gw).await.1;
    assert!(problems_of(&ready, "ratelimit").iter().any(|p| p.contains("in-process limiter")), "{ready}");
    t.ratelimit.restart().await;
    assert_eventually!(
        Duration::from_secs(10),
        async {
            let _ = t.gw.post_prometheus(&webhook(&[Alert::firing("B")])).await;
            problems_of(&readyz(&t.gw).await.1, "ratelimit").is_empty()
        },
        "ratelimit back on Redis"
    );
}
