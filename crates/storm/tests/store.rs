//! The storm store contract: one body, run against the memory store, the
//! embedded (on-disk) store and the Redis store on a real `redis-server`; all
//! must decide alike, atomically, and keep constant-size state with a TTL on
//! every key. The embedded store must also decide after a reopen as if it had
//! never stopped.

use std::sync::Arc;
use std::time::Duration;

use breakwater_embedded::EmbeddedStore;
use breakwater_keyspace::{Keyspace, RedisConfig};
use breakwater_signal::{ManualClock, UnixMillis, storm_cr_name};
use breakwater_storm::{
    EmbeddedStormStore, MemoryStormStore, Outcome, RedisStormStore, StormCount, StormQuery, StormRules, StormStore,
    StormType,
};
use breakwater_testkit::{RedisServer, unique_key_root};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const T0: UnixMillis = 1_700_000_000_000;

fn rules() -> StormRules {
    StormRules::new(10, 5, Duration::from_secs(60), Duration::from_secs(300), 100)
}

fn alert(ns: &str, name: &str, pod: usize) -> StormQuery {
    StormQuery {
        namespace: ns.into(),
        alert_name: name.into(),
        resource_id: format!("{ns}:Pod:p{pod}"),
        delivery: None,
    }
}

async fn redis_store(server: &RedisServer, root: &str, rules: StormRules) -> RedisStormStore {
    let config = RedisConfig { url: server.url(), key_root: root.to_owned(), ..RedisConfig::default() };
    RedisStormStore::new(Keyspace::from_config(&config, "storm").unwrap(), rules)
}

/// An embedded store in `dir`, restoring what is live at `now`.
fn embedded_store(dir: &std::path::Path, rules: StormRules, now: UnixMillis) -> EmbeddedStormStore {
    let store = EmbeddedStore::open(dir, Arc::new(ManualClock::new(now))).unwrap();
    EmbeddedStormStore::open(&store, rules).unwrap()
}

/// Reference §11.3: threshold boundaries, one window per (namespace,
/// alertname), expiry by inactivity and maximum duration.
async fn run_contract(store: &dyn StormStore) {
    // Pattern: 5 distinct pods are not a storm, the 6th opens one.
    let five: Vec<_> = (0..5).map(|p| alert("prod", "PodCrash", p)).collect();
    let v = store.detect(&five, T0).await.unwrap();
    assert!(v.iter().all(|v| v.outcome == Outcome::None));
    let v = store.detect(&[alert("prod", "PodCrash", 5), alert("prod", "PodCrash", 6)], T0 + 1).await.unwrap();
    assert_eq!((v[0].outcome, v[0].storm, v[0].storm_alerts), (Outcome::Opened, Some(StormType::Pattern), 1));
    assert_eq!((v[1].outcome, v[1].storm_alerts, v[1].window_start), (Outcome::Joined, 2, T0));
    // Same alertname elsewhere, and another alertname here: separate windows.
    let v = store.detect(&[alert("dev", "PodCrash", 0), alert("prod", "DiskFull", 0)], T0 + 2).await.unwrap();
    assert!(v.iter().all(|v| v.outcome == Outcome::None && v.window_start == T0 + 2));
    // Rate: 10 alerts of one resource are not a storm, the 11th opens one.
    let ten: Vec<_> = (0..10).map(|_| alert("stage", "Flap", 0)).collect();
    assert!(store.detect(&ten, T0).await.unwrap().iter().all(|v| v.outcome == Outcome::None));
    let v = store.detect(&[alert("stage", "Flap", 0)], T0 + 59_999).await.unwrap();
    assert_eq!((v[0].outcome, v[0].storm), (Outcome::Opened, Some(StormType::Rate)));
    // 60 s of silence closes the window: the next alert starts over.
    let v = store.detect(&[alert("stage", "Flap", 0)], T0 + 59_999 + 60_000).await.unwrap();
    assert_eq!((v[0].outcome, v[0].window_start), (Outcome::None, T0 + 119_999));
    // The prod storm stays open while busy, but not past 5 minutes.
    for minute in 1..5 {
        let v = store.detect(&[alert("prod", "PodCrash", 1)], T0 + minute * 59_000).await.unwrap();
        assert_eq!(v[0].outcome, Outcome::Joined, "minute {minute}");
    }
    let v = store.detect(&[alert("prod", "PodCrash", 1)], T0 + 300_000).await.unwrap();
    assert_eq!((v[0].outcome, v[0].window_start), (Outcome::None, T0 + 300_000));
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    run_contract(&MemoryStormStore::new(rules())).await;
}

#[tokio::test]
async fn embedded_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    run_contract(&embedded_store(dir.path(), rules(), T0)).await;
}

#[tokio::test]
async fn redis_store_keeps_the_contract_with_bounded_keys() {
    let server = RedisServer::start().await;
    let root = unique_key_root("storm_contract");
    run_contract(&redis_store(&server, &root, rules()).await).await;
    assert_eq!(server.keys_without_ttl(&format!("{root}:*")).await, Vec::<String>::new());
    // A record and a resource set per (namespace, alertname), 4 of them, plus
    // one counter per storm, 2 of them: constant-size state.
    let keys = server.admin_command(&["EVAL", "return #redis.call('KEYS', ARGV[1])", "0", &format!("{root}:*")]).await;
    assert_eq!(keys, "10");
}

/// Reference §11.4 "Should detect storm with 50 concurrent similar alerts":
/// five individual alerts, exactly one opens the storm, the rest join it.
async fn fifty_concurrent_alerts_open_exactly_one_storm(store: Arc<dyn StormStore>) {
    let calls: Vec<_> = (0..50)
        .map(|p| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.detect(&[alert("prod", "PodCrash", p)], T0).await.unwrap().remove(0) })
        })
        .collect();
    let mut verdicts = Vec::new();
    for call in calls {
        verdicts.push(call.await.unwrap());
    }
    let count = |o: Outcome| verdicts.iter().filter(|v| v.outcome == o).count();
    assert_eq!((count(Outcome::None), count(Outcome::Opened), count(Outcome::Joined)), (5, 1, 44));
    let mut storm_counts: Vec<u64> =
        verdicts.iter().filter(|v| v.outcome != Outcome::None).map(|v| v.storm_alerts).collect();
    storm_counts.sort_unstable();
    assert_eq!(storm_counts, (1..=45).collect::<Vec<_>>(), "exact, gap-free storm count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_alerts_open_exactly_one_storm_memory() {
    fifty_concurrent_alerts_open_exactly_one_storm(Arc::new(MemoryStormStore::new(rules()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_alerts_open_exactly_one_storm_embedded() {
    let dir = tempfile::tempdir().unwrap();
    fifty_concurrent_alerts_open_exactly_one_storm(Arc::new(embedded_store(dir.path(), rules(), T0))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_alerts_open_exactly_one_storm_redis() {
    let server = RedisServer::start().await;
    let store = redis_store(&server, &unique_key_root("storm_50"), rules()).await;
    fifty_concurrent_alerts_open_exactly_one_storm(Arc::new(store)).await;
}

/// Repeats of folded alerts add to the storm's counter, also after its window
/// closed, and a new storm of the same alertname counts apart.
async fn repeats_count_on_the_storm(store: &dyn StormStore) {
    let six: Vec<_> = (0..6).map(|p| alert("prod", "PodCrash", p)).collect();
    let v = store.detect(&six, T0).await.unwrap();
    assert_eq!((v[5].outcome, v[5].storm_alerts), (Outcome::Opened, 1));
    let name = storm_cr_name("prod", "PodCrash", T0);
    let repeats = StormCount { name: name.clone(), alerts: 3, delivery: None };
    assert_eq!(store.count(std::slice::from_ref(&repeats), T0 + 10).await.unwrap(), vec![4]);
    let v = store.detect(&[alert("prod", "PodCrash", 6)], T0 + 20).await.unwrap();
    assert_eq!((v[0].outcome, v[0].storm_alerts), (Outcome::Joined, 5));
    // The window closes after 60 s of silence; the storm CR still counts repeats.
    assert_eq!(store.count(&[repeats.clone(), repeats], T0 + 200_000).await.unwrap(), vec![8, 11]);
    let later: Vec<_> = (0..6).map(|p| alert("prod", "PodCrash", p)).collect();
    let v = store.detect(&later, T0 + 200_000).await.unwrap();
    assert_eq!((v[5].outcome, v[5].storm_alerts, v[5].window_start), (Outcome::Opened, 1, T0 + 200_000));
    // A storm whose counter the store does not hold (its state was lost) has no known
    // total: 0, and counting it does not start a counter from 0 behind the CR's count.
    // A delivery counts once: its copy adds nothing and answers the total.
    let late = storm_cr_name("prod", "PodCrash", T0 + 200_000);
    let delivered = |d: u128| StormCount { name: late.clone(), alerts: 1, delivery: Some(d) };
    assert_eq!(store.count(&[delivered(7), delivered(7)], T0 + 200_001).await.unwrap(), vec![2, 2]);
    assert_eq!(store.count(&[delivered(8), delivered(7)], T0 + 200_002).await.unwrap(), vec![3, 3]);
    let lost = StormCount { name: storm_cr_name("prod", "Lost", T0), alerts: 2, delivery: None };
    assert_eq!(store.count(std::slice::from_ref(&lost), T0 + 200_001).await.unwrap(), vec![0]);
    assert_eq!(store.count(&[lost], T0 + 200_002).await.unwrap(), vec![0]);
}

#[tokio::test]
async fn repeats_count_on_the_storm_memory() {
    repeats_count_on_the_storm(&MemoryStormStore::new(rules())).await;
}

#[tokio::test]
async fn repeats_count_on_the_storm_embedded() {
    let dir = tempfile::tempdir().unwrap();
    repeats_count_on_the_storm(&embedded_store(dir.path(), rules(), T0)).await;
}

#[tokio::test]
async fn repeats_count_on_the_storm_redis() {
    let server = RedisServer::start().await;
    let root = unique_key_root("storm_repeats");
    repeats_count_on_the_storm(&redis_store(&server, &root, rules()).await).await;
    assert_eq!(server.keys_without_ttl(&format!("{root}:*")).await, Vec::<String>::new());
}

/// Reference §11.2 "should persist storm detection state across Gateway restart".
#[tokio::test]
async fn state_survives_a_service_restart() {
    let server = RedisServer::start().await;
    let root = unique_key_root("storm_restart");
    let five: Vec<_> = (0..5).map(|p| alert("prod", "PodCrash", p)).collect();
    redis_store(&server, &root, rules()).await.detect(&five, T0).await.unwrap();
    let restarted = redis_store(&server, &root, rules()).await;
    let v = restarted.detect(&[alert("prod", "PodCrash", 5)], T0 + 1).await.unwrap();
    assert_eq!(v[0].outcome, Outcome::Opened);
}

/// The embedded store's version of §11.2: an open storm keeps its window,
/// its resource list and its counter across a reopen.
#[tokio::test]
async fn embedded_state_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let six: Vec<_> = (0..6).map(|p| alert("prod", "PodCrash", p)).collect();
    {
        let store = embedded_store(dir.path(), rules(), T0);
        let v = store.detect(&six, T0).await.unwrap();
        assert_eq!(v[5].outcome, Outcome::Opened);
        let repeats = StormCount { name: storm_cr_name("prod", "PodCrash", T0), alerts: 2, delivery: None };
        assert_eq!(store.count(&[repeats], T0 + 5).await.unwrap(), vec![3]);
    }
    let store = embedded_store(dir.path(), rules(), T0 + 10);
    // A listed pod again: no new resource, and the storm counts on.
    let v = store.detect(&[alert("prod", "PodCrash", 0), alert("prod", "PodCrash", 6)], T0 + 10).await.unwrap();
    assert_eq!((v[0].outcome, v[0].storm_alerts, v[0].window_start), (Outcome::Joined, 4, T0));
    assert_eq!((v[0].resource_listed, v[1].storm_alerts), (true, 5));
    // Once the window closed (60 s of silence), a reopen does not bring it back.
    drop(store);
    let store = embedded_store(dir.path(), rules(), T0 + 70_010);
    let v = store.detect(&six, T0 + 70_010).await.unwrap();
    assert_eq!(v.iter().filter(|v| v.outcome != Outcome::None).count(), 1);
    assert_eq!((v[5].outcome, v[5].window_start), (Outcome::Opened, T0 + 70_010));
}

/// Random alerts, repeats and clock steps, with the embedded store reopened
/// at random points: it answers exactly as a memory store that never stopped.
#[test]
fn embedded_store_reopened_answers_as_an_uninterrupted_memory_store() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rules = StormRules::new(4, 3, Duration::from_secs(60), Duration::from_secs(300), 5)
        .with_count_ttl(Duration::from_secs(400));
    let step = prop_oneof![4 => 0i64..5_000, 2 => 5_000i64..120_000, 1 => 120_000i64..500_000];
    let query = (0usize..2, 0usize..2, 0usize..9);
    // Few reopens: each costs the engine's shutdown (up to a quarter second).
    let batch = (proptest::collection::vec(query, 1..8), step, proptest::bool::weighted(0.15), 0u64..3);
    let batches = proptest::collection::vec(batch, 1..24);
    let mut runner = TestRunner::new(Config { cases: 24, failure_persistence: None, ..Config::default() });
    let result = runner.run(&batches, |batches| {
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let memory = MemoryStormStore::new(rules);
            let mut embedded = Some(embedded_store(dir.path(), rules, T0));
            let mut now = T0;
            for (i, (queries, step, reopen, repeats)) in batches.iter().enumerate() {
                now += step;
                if *reopen {
                    drop(embedded.take());
                    embedded = Some(embedded_store(dir.path(), rules, now));
                }
                let Some(store) = &embedded else { unreachable!("reopened above") };
                let batch: Vec<StormQuery> =
                    queries.iter().map(|&(ns, name, pod)| alert(["a", "b"][ns], ["X", "Y"][name], pod)).collect();
                let expected = memory.detect(&batch, now).await.unwrap();
                prop_assert_eq!(&store.detect(&batch, now).await.unwrap(), &expected, "batch {}", i);
                // Repeats on every storm this batch saw, as the edge sends them.
                let counts: Vec<StormCount> = batch
                    .iter()
                    .zip(&expected)
                    .filter(|(_, v)| v.storm.is_some())
                    .map(|(q, v)| StormCount {
                        name: storm_cr_name(&q.namespace, &q.alert_name, v.window_start),
                        alerts: *repeats,
                        delivery: None,
                    })
                    .collect();
                let expected = memory.count(&counts, now + 1).await.unwrap();
                prop_assert_eq!(store.count(&counts, now + 1).await.unwrap(), expected, "counts of batch {}", i);
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Random interleavings of alerts and clock steps give identical decisions.
#[test]
fn memory_and_redis_agree_on_random_sequences() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let server = runtime.block_on(RedisServer::start());
    let rules = StormRules::new(4, 3, Duration::from_secs(60), Duration::from_secs(300), 5);
    let step = prop_oneof![4 => 0i64..5_000, 2 => 5_000i64..120_000, 1 => -2_000i64..0];
    let query = (0usize..2, 0usize..2, 0usize..9);
    let batches = proptest::collection::vec((proptest::collection::vec(query, 1..8), step), 1..30);
    let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    let result = runner.run(&batches, |batches| {
        runtime.block_on(async {
            let root = unique_key_root("storm_agree");
            let redis = redis_store(&server, &root, rules).await;
            let memory = MemoryStormStore::new(rules);
            let mut now = T0;
            for (i, (queries, step)) in batches.iter().enumerate() {
                now += step;
                let batch: Vec<StormQuery> =
                    queries.iter().map(|&(ns, name, pod)| alert(["a", "b"][ns], ["X", "Y"][name], pod)).collect();
                let expected = memory.detect(&batch, now).await.unwrap();
                let got = redis.detect(&batch, now).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(got, expected, "batch {} at T0{:+}", i, now - T0);
            }
            prop_assert_eq!(server.keys_without_ttl(&format!("{root}:*")).await, Vec::<String>::new());
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
