//! Measures what Redis holds and how fast the scripts decide, on a
//! redis-server of its own: bytes per dedup entry, per storm window, per storm
//! counter and per ratelimit bucket (from `INFO memory` over many entries), and
//! decisions per second of each script. `breakwater plan` uses these numbers.
//!
//! Run: `cargo bench -p breakwater-tests --bench redis_keyspaces` (optionally
//! `-- <entries>`, default 100000). Numbers go to stdout; nothing is asserted.

use std::time::{Duration, Instant};

use breakwater_dedup::{DedupStore, DedupWindow, DeliveryKey, Query, RedisDedupStore, Status};
use breakwater_keyspace::{Keyspace, RedisConfig};
use breakwater_ratelimit::{Limits, RateLimitStore, RedisRateLimitStore, TokenBucket};
use breakwater_signal::fingerprint_of;
use breakwater_storm::{RedisStormStore, StormQuery, StormRules, StormStore};
use breakwater_testkit::RedisServer;

const BATCH: usize = 500;

fn keyspace(server: &RedisServer, component: &str) -> Keyspace {
    let config = RedisConfig { url: server.url(), key_root: "bw".into(), ..RedisConfig::default() };
    Keyspace::from_config(&config, component).expect("keyspace")
}

async fn used_memory(server: &RedisServer) -> i64 {
    let info = server.admin_command(&["INFO", "memory"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO memory")
}

fn fingerprint(i: usize) -> String {
    fingerprint_of(&["HighMemory", "prod", "Pod", &format!("api-{i}")])
}

/// Bytes per entry: fill `entries` records through the store, compare memory.
async fn dedup_bytes_per_entry(entries: usize) -> f64 {
    let server = RedisServer::start().await;
    let store = RedisDedupStore::new(keyspace(&server, "dedup"), DedupWindow::new(Duration::from_secs(300)));
    store
        .check(&[Query { fingerprint: fingerprint(usize::MAX), status: Status::Firing, delivery: None }], 1)
        .await
        .expect("warm up");
    let before = used_memory(&server).await;
    for chunk in (0..entries).collect::<Vec<_>>().chunks(BATCH) {
        let batch: Vec<Query> = chunk
            .iter()
            .map(|&i| Query { fingerprint: fingerprint(i), status: Status::Firing, delivery: None })
            .collect();
        store.check(&batch, 1_000).await.expect("dedup check");
    }
    (used_memory(&server).await - before) as f64 / entries as f64
}

/// Bytes per remembered delivery (the copy window's keys): `entries` repeats of one open
/// incident, each a delivery of its own, so only the delivery keys grow.
async fn delivery_bytes_per_entry(entries: usize) -> f64 {
    let server = RedisServer::start().await;
    let store = RedisDedupStore::new(keyspace(&server, "dedup"), DedupWindow::new(Duration::from_secs(300)));
    let query = |d: usize| Query {
        fingerprint: fingerprint(0),
        status: Status::Firing,
        delivery: Some(DeliveryKey(d as u128 | 1 << 100)),
    };
    store.check(&[query(usize::MAX)], 1).await.expect("warm up");
    let before = used_memory(&server).await;
    for chunk in (0..entries).collect::<Vec<_>>().chunks(BATCH) {
        let batch: Vec<Query> = chunk.iter().map(|&d| query(d)).collect();
        store.check(&batch, 1_000).await.expect("dedup check");
    }
    (used_memory(&server).await - before) as f64 / entries as f64
}

/// Bytes per storm window: one (namespace, alertname) per entry, one alert each,
/// then the same for windows that stormed (record + 8-resource set + counter).
async fn storm_bytes_per_window(windows: usize, alerts_per_window: usize) -> f64 {
    let server = RedisServer::start().await;
    let rules = StormRules::new(3, 5, Duration::from_secs(60), Duration::from_secs(300), 100);
    let store = RedisStormStore::new(keyspace(&server, "storm"), rules);
    let warm = StormQuery { namespace: "warm".into(), alert_name: "w".into(), resource_id: "w".into(), delivery: None };
    store.detect(&[warm], 1).await.expect("warm up");
    let before = used_memory(&server).await;
    let per_batch = (BATCH / alerts_per_window).max(1);
    for chunk in (0..windows).collect::<Vec<_>>().chunks(per_batch) {
        let batch: Vec<StormQuery> = chunk
            .iter()
            .flat_map(|&w| {
                (0..alerts_per_window).map(move |a| StormQuery {
                    namespace: format!("ns-{}", w % 1000),
                    alert_name: format!("Alert{w}"),
                    resource_id: format!("ns-{}:Pod:p{a}", w % 1000),
                    delivery: None,
                })
            })
            .collect();
        store.detect(&batch, 1_000).await.expect("storm detect");
    }
    (used_memory(&server).await - before) as f64 / windows as f64
}

/// Bytes per storm counter: the counter a storm CR's alerts are counted on,
/// which outlives its window by `count_ttl` (here 900 s).
async fn storm_bytes_per_counter(counters: usize) -> f64 {
    let server = RedisServer::start().await;
    let rules = StormRules::new(3, 5, Duration::from_secs(60), Duration::from_secs(300), 100)
        .with_count_ttl(Duration::from_secs(900));
    let store = RedisStormStore::new(keyspace(&server, "storm"), rules);
    let storm = |w: usize| -> Vec<StormQuery> {
        (0..6)
            .map(|p| StormQuery {
                namespace: "prod".into(),
                alert_name: format!("Alert{w}"),
                resource_id: format!("p{p}"),
                delivery: None,
            })
            .collect()
    };
    store.detect(&storm(usize::MAX), 1).await.expect("warm up");
    let before = used_memory(&server).await;
    // Each storm opens with its counter; then its window ends (its record and resource set
    // go), and the counter stays for count_ttl: what `breakwater plan` calls a counter.
    for chunk in (0..counters).collect::<Vec<_>>().chunks(BATCH / 6) {
        let batch: Vec<StormQuery> = chunk.iter().flat_map(|&w| storm(w)).collect();
        store.detect(&batch, 1_000).await.expect("storm detect");
        for &w in chunk {
            let [record, resources, _] = store.keys("prod", &format!("Alert{w}"));
            server.admin_command(&["DEL", &record, &resources]).await;
        }
    }
    (used_memory(&server).await - before) as f64 / counters as f64
}

/// A sender as the edge names it: its IP address.
fn sender(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// Bytes per sender bucket: one 50-signal webhook from each of `senders`
/// senders. At 1 signal/s each bucket stays ~51 s, until it is full again.
async fn ratelimit_bytes_per_bucket(senders: usize) -> f64 {
    let server = RedisServer::start().await;
    let store = RedisRateLimitStore::new(keyspace(&server, "rl"));
    let limits = Limits::uniform(TokenBucket::new(1.0, 100));
    store.check(&limits.charges(&sender(usize::MAX), 50, &[]), 1).await.expect("warm up");
    let before = used_memory(&server).await;
    for chunk in (0..senders).collect::<Vec<_>>().chunks(BATCH) {
        let decisions = futures::future::join_all(chunk.iter().map(|&i| {
            let sender = sender(i);
            let (store, limits) = (&store, &limits);
            async move { store.check(&limits.charges(&sender, 50, &[]), 1_000).await }
        }))
        .await;
        assert!(decisions.iter().all(|d| d.as_ref().is_ok_and(|d| d.0.allowed)), "every first webhook is allowed");
    }
    (used_memory(&server).await - before) as f64 / senders as f64
}

/// Decisions per second over `duration`, one query per call (round-trip bound)
/// and `batch` queries per call (script bound).
async fn rate<F, Fut>(duration: Duration, batch: usize, mut call: F) -> f64
where
    F: FnMut(usize, usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let mut decisions = 0;
    let mut round = 0;
    while start.elapsed() < duration {
        call(round, batch).await;
        decisions += batch;
        round += 1;
    }
    decisions as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let entries: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(100_000);
    println!(
        "redis-server: {}",
        RedisServer::start()
            .await
            .admin_command(&["INFO", "server"])
            .await
            .lines()
            .find(|l| l.starts_with("redis_version"))
            .unwrap_or("?")
    );
    println!("dedup:  {:.1} bytes per entry over {entries} entries", dedup_bytes_per_entry(entries).await);
    println!(
        "dedup:  {:.1} bytes per remembered delivery over {entries} deliveries",
        delivery_bytes_per_entry(entries).await
    );
    println!(
        "storm:  {:.1} bytes per quiet window (1 alert) over {entries} windows",
        storm_bytes_per_window(entries, 1).await
    );
    let stormed = entries / 10;
    let stormed_8 = storm_bytes_per_window(stormed, 8).await;
    println!("storm:  {stormed_8:.1} bytes per stormed window (8 alerts, 8 resources) over {stormed} windows");
    let listed = entries / 100;
    let stormed_100 = storm_bytes_per_window(listed, 100).await;
    println!(
        "storm:  {stormed_100:.1} bytes per stormed window (100 alerts, 100 resources) over {listed} windows: \
         {:.1} bytes per further listed resource (ids of ~14 bytes)",
        (stormed_100 - stormed_8) / 92.0
    );
    println!("storm:  {:.1} bytes per storm counter over {entries} counters", storm_bytes_per_counter(entries).await);
    println!(
        "ratelimit: {:.1} bytes per sender bucket over {entries} senders",
        ratelimit_bytes_per_bucket(entries).await
    );

    let server = RedisServer::start().await;
    let dedup = RedisDedupStore::new(keyspace(&server, "dedup"), DedupWindow::new(Duration::from_secs(300)));
    let storm = RedisStormStore::new(
        keyspace(&server, "storm"),
        StormRules::new(10, 5, Duration::from_secs(60), Duration::from_secs(300), 100),
    );
    let limiter = RedisRateLimitStore::new(keyspace(&server, "rl"));
    let limits = Limits::uniform(TokenBucket::new(1e9, u32::MAX));
    let secs = Duration::from_secs(3);
    for batch in [1, 100] {
        let d = rate(secs, batch, |round, n| {
            let q: Vec<Query> = (0..n)
                .map(|i| Query {
                    fingerprint: fingerprint((round * n + i) % 50_000),
                    status: Status::Firing,
                    delivery: None,
                })
                .collect();
            let dedup = &dedup;
            async move {
                dedup.check(&q, 2_000).await.expect("dedup");
            }
        })
        .await;
        let s = rate(secs, batch, |round, n| {
            let q: Vec<StormQuery> = (0..n)
                .map(|i| StormQuery {
                    namespace: "prod".into(),
                    alert_name: format!("A{}", (round * n + i) % 1000),
                    resource_id: format!("prod:Pod:p{i}"),
                    delivery: None,
                })
                .collect();
            let storm = &storm;
            async move {
                storm.detect(&q, 2_000).await.expect("storm");
            }
        })
        .await;
        let r = rate(secs, batch, |round, n| {
            let (limiter, limits) = (&limiter, &limits);
            async move {
                let charges = limits.charges(&format!("10.0.0.{}", round % 200), u32::try_from(n).unwrap_or(1), &[]);
                limiter.check(&charges, 2_000).await.expect("ratelimit");
            }
        })
        .await;
        println!("batch {batch:>3}: dedup_check {d:>9.0}/s  storm_detect {s:>9.0}/s  ratelimit (signals) {r:>9.0}/s");
    }
}
