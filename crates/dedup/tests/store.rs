//! The dedup store contract: one body, run against the memory store and the
//! Redis store on a real `redis-server`; both must decide alike, atomically,
//! and every Redis key must carry a TTL.

use std::sync::Arc;
use std::time::Duration;

use breakwater_dedup::{
    Bind, Binding, Decision, DedupStore, DedupWindow, DeliveryKey, MemoryDedupStore, Placement, Query, RedisDedupStore,
    Status, WindowEnd, WindowRef,
};
use breakwater_keyspace::{Keyspace, RedisConfig};
use breakwater_signal::{UnixMillis, fingerprint_of};
use breakwater_testkit::{RedisServer, unique_key_root};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const T0: UnixMillis = 1_700_000_000_000;
const WINDOW_MS: i64 = 300_000;

fn window() -> DedupWindow {
    DedupWindow::new(Duration::from_millis(WINDOW_MS as u64))
}

fn fp(i: usize) -> String {
    fingerprint_of(&["Alert", "ns", "Pod", &format!("p{i}")])
}

fn firing(i: usize) -> Query {
    Query { fingerprint: fp(i), status: Status::Firing, delivery: None }
}

fn resolved(i: usize) -> Query {
    Query { fingerprint: fp(i), status: Status::Resolved, delivery: None }
}

/// `query` as delivery `d` (a sender's retry or an HA peer's copy repeats `d`).
fn delivered(query: Query, d: u128) -> Query {
    Query { delivery: Some(DeliveryKey(d)), ..query }
}

const COPY_WINDOW_MS: i64 = 120_000;

async fn redis_store(server: &RedisServer, root: &str) -> RedisDedupStore {
    let config = RedisConfig { url: server.url(), key_root: root.to_owned(), ..RedisConfig::default() };
    RedisDedupStore::new(Keyspace::from_config(&config, "dedup").unwrap(), window())
}

/// (batch, now, expected (decision, count) per query).
type Step = (Vec<Query>, UnixMillis, Vec<(Decision, u64)>);

fn contract() -> Vec<Step> {
    use Decision::{Copy, Duplicate, New, Resolved, ResolvedUnknown};
    const T1: UnixMillis = T0 + 10 * WINDOW_MS;
    vec![
        (vec![firing(1)], T0, vec![(New, 1)]),
        (vec![firing(1)], T0 + 1_000, vec![(Duplicate, 2)]),
        // Two identical alerts in one batch: one incident, counted twice.
        (vec![firing(2), firing(2), firing(1)], T0 + 2_000, vec![(New, 1), (Duplicate, 2), (Duplicate, 3)]),
        // The window slides from the last alert…
        (vec![firing(1)], T0 + 2_000 + WINDOW_MS - 1, vec![(Duplicate, 4)]),
        // …and a silence of a whole window closes it.
        (vec![firing(1)], T0 + 2_000 + 2 * WINDOW_MS, vec![(New, 1)]),
        (vec![resolved(1), resolved(3)], T0 + 2_000 + 2 * WINDOW_MS + 1, vec![(Resolved, 1), (ResolvedUnknown, 0)]),
        // After a resolution the next firing is a new incident.
        (vec![firing(1)], T0 + 2_000 + 2 * WINDOW_MS + 2, vec![(New, 1)]),
        // A delivery counts once: its copy (in the same batch or later) changes nothing…
        (vec![delivered(firing(5), 1), delivered(firing(5), 1)], T1, vec![(New, 1), (Copy, 1)]),
        (vec![delivered(firing(5), 1), delivered(firing(5), 2)], T1 + 1_000, vec![(Copy, 1), (Duplicate, 2)]),
        // …until the copy window has passed: then it is a re-notification, and counts.
        (vec![delivered(firing(5), 1)], T1 + COPY_WINDOW_MS, vec![(Duplicate, 3)]),
        // A late copy of a firing after its resolution does not reopen the incident.
        (
            vec![delivered(resolved(5), 3), delivered(firing(5), 2)],
            T1 + COPY_WINDOW_MS + 1,
            vec![(Resolved, 3), (Copy, 0)],
        ),
        (vec![delivered(resolved(5), 3)], T1 + COPY_WINDOW_MS + 2, vec![(Copy, 0)]),
    ]
}

async fn run_contract(store: &dyn DedupStore) {
    for (i, (batch, now, expected)) in contract().into_iter().enumerate() {
        let verdicts = store.check(&batch, now).await.unwrap();
        let got: Vec<(Decision, u64)> =
            verdicts.iter().map(|v| (v.decision, v.record.as_ref().map_or(0, |r| r.count))).collect();
        assert_eq!(got, expected, "step {i}");
    }
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    run_contract(&MemoryDedupStore::new(window())).await;
}

#[tokio::test]
async fn redis_store_keeps_the_contract_and_every_key_expires() {
    let server = RedisServer::start().await;
    let root = unique_key_root("dedup_contract");
    run_contract(&redis_store(&server, &root).await).await;
    assert_eq!(server.keys_without_ttl(&format!("{root}:*")).await, Vec::<String>::new());
    // fp(1)'s record, last written by step 6, is in the hash of that step's epoch, which lives
    // until every record it can hold is closed: the epoch's end and a window, and a second.
    let store = redis_store(&server, &root).await;
    let written = T0 + 2_000 + 2 * WINDOW_MS + 2;
    let epoch = written / WINDOW_MS;
    let (key, field) = store.record_slot(&fp(1), epoch);
    assert_eq!(server.admin_command(&["HGET", &key, &field]).await, format!("{written}|0|1|?"));
    let ttl: i64 = server.admin_command(&["PTTL", &key]).await.parse().unwrap();
    let closes = (epoch + 2) * WINDOW_MS - written;
    assert!(ttl > 0 && ttl <= closes + 1_000, "the hash lives until its records close: {ttl} ms, {closes} ms");
    // Each open incident is a field, not a key.
    let records =
        server.admin_command(&["EVAL", "return #redis.call('KEYS', ARGV[1])", "0", &format!("{root}:dedup:r:*")]).await;
    assert!(records.parse::<usize>().unwrap() <= 3, "{records} record hashes");
}

/// Reference §11.4 "Should deduplicate 100 identical concurrent alerts":
/// exactly one new incident, the others counted 2..=100 with no gap.
async fn hundred_identical_concurrent_alerts(store: Arc<dyn DedupStore>) {
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.check(&[firing(7)], T0).await.unwrap().remove(0) })
        })
        .collect();
    let mut verdicts = Vec::new();
    for call in calls {
        verdicts.push(call.await.unwrap());
    }
    assert_eq!(verdicts.iter().filter(|v| v.decision == Decision::New).count(), 1);
    let mut counts: Vec<u64> = verdicts.iter().filter_map(|v| v.record.as_ref().map(|r| r.count)).collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=100).collect::<Vec<_>>());
    let first_seen: Vec<_> = verdicts.iter().filter_map(|v| v.record.as_ref().map(|r| r.first_seen)).collect();
    assert!(first_seen.iter().all(|f| *f == T0), "every duplicate knows the same window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_identical_concurrent_alerts_memory() {
    hundred_identical_concurrent_alerts(Arc::new(MemoryDedupStore::new(window()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_identical_concurrent_alerts_redis() {
    let server = RedisServer::start().await;
    let store = redis_store(&server, &unique_key_root("dedup_100")).await;
    hundred_identical_concurrent_alerts(Arc::new(store)).await;
}

async fn bind_points_only_the_open_window(store: &dyn DedupStore) {
    let to = Placement::Bound(Binding { namespace: "prod".into(), name: "storm-abc-1".into() });
    let v = store.check(&[firing(1)], T0).await.unwrap().remove(0);
    assert_eq!(v.record.map(|r| r.placement), Some(Placement::Pending), "a new incident waits to be placed");
    let window = |f, first_seen| WindowRef { fingerprint: fp(f), first_seen };
    assert_eq!(
        store.placements(&[window(1, T0), window(1, T0 - 1)], T0).await.unwrap(),
        vec![Some(Placement::Pending), None]
    );
    let stale = Bind { fingerprint: fp(1), first_seen: T0 - 1, to: to.clone() };
    let unknown = Bind { fingerprint: fp(9), first_seen: T0, to: to.clone() };
    let good = Bind { fingerprint: fp(1), first_seen: T0, to: to.clone() };
    assert_eq!(store.bind(&[stale, unknown, good], T0 + 1).await.unwrap(), 1);
    let v = store.check(&[firing(1)], T0 + 2).await.unwrap().remove(0);
    assert_eq!((v.decision, v.record.map(|r| r.placement)), (Decision::Duplicate, Some(to.clone())));
    assert_eq!(store.placements(&[window(1, T0)], T0 + 3).await.unwrap(), vec![Some(to)]);
    // A window that closed has no placement any more.
    assert_eq!(store.placements(&[window(1, T0)], T0 + 2 + WINDOW_MS).await.unwrap(), vec![None]);
}

#[tokio::test]
async fn bind_points_only_the_open_window_memory() {
    bind_points_only_the_open_window(&MemoryDedupStore::new(window())).await;
}

#[tokio::test]
async fn bind_points_only_the_open_window_redis() {
    let server = RedisServer::start().await;
    bind_points_only_the_open_window(&redis_store(&server, &unique_key_root("dedup_bind")).await).await;
}

/// Issue 14: a window given an end (its CR finished) closes then although its alert keeps
/// firing less than a window apart; an end for another window changes nothing.
async fn an_end_closes_the_window_while_alerts_keep_coming(store: &dyn DedupStore) {
    store.check(&[firing(1), firing(2)], T0).await.unwrap();
    let end = |f, first_seen| WindowEnd { fingerprint: fp(f), first_seen, ends_at: T0 + 3_000 };
    assert_eq!(store.end(&[end(1, T0), end(2, T0 - 1), end(9, T0)], T0 + 1).await.unwrap(), 1);
    for at in [T0 + 1_000, T0 + 2_000, T0 + 2_999] {
        let v = store.check(&[firing(1)], at).await.unwrap().remove(0);
        assert_eq!(v.decision, Decision::Duplicate, "at {at}");
        assert_eq!(v.record.and_then(|r| r.ends_at), Some(T0 + 3_000), "the verdict tells the end");
    }
    let to = Placement::Bound(Binding { namespace: "prod".into(), name: "rr-found".into() });
    let rebind = Bind { fingerprint: fp(1), first_seen: T0, to: to.clone() };
    assert_eq!(store.bind(&[rebind], T0 + 2_999).await.unwrap(), 1, "a binding keeps the end");
    let v = store.check(&[firing(1), firing(2)], T0 + 3_000).await.unwrap();
    assert_eq!(v[0].decision, Decision::New, "the end came: a new incident");
    assert_eq!(v[0].record.as_ref().and_then(|r| r.ends_at), None, "with no end of its own");
    assert_eq!(v[1].decision, Decision::Duplicate, "a window without an end stays open");
    let ended = store.end(&[end(1, T0)], T0 + 3_001).await.unwrap();
    assert_eq!(ended, 0, "an end for a closed window is ignored");
}

#[tokio::test]
async fn an_end_closes_the_window_while_alerts_keep_coming_memory() {
    an_end_closes_the_window_while_alerts_keep_coming(&MemoryDedupStore::new(window())).await;
}

#[tokio::test]
async fn an_end_closes_the_window_while_alerts_keep_coming_redis() {
    let server = RedisServer::start().await;
    let store = redis_store(&server, &unique_key_root("dedup_end")).await;
    an_end_closes_the_window_while_alerts_keep_coming(&store).await;
}

/// Reference §11.2 "should persist deduplication state across Gateway restart":
/// a new store (a restarted service) on the same Redis keeps deciding.
#[tokio::test]
async fn state_survives_a_service_restart() {
    let server = RedisServer::start().await;
    let root = unique_key_root("dedup_restart");
    redis_store(&server, &root).await.check(&[firing(1), firing(1)], T0).await.unwrap();
    let restarted = redis_store(&server, &root).await;
    let v = restarted.check(&[firing(1)], T0 + 10).await.unwrap().remove(0);
    assert_eq!((v.decision, v.record.map(|r| r.count)), (Decision::Duplicate, Some(3)));
}

/// Random interleavings of signals and clock steps give identical decisions
/// from both stores.
#[test]
fn memory_and_redis_agree_on_random_sequences() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let server = runtime.block_on(RedisServer::start());
    let step = prop_oneof![4 => 0i64..2_000, 2 => 2_000i64..(2 * WINDOW_MS), 1 => -1_000i64..0];
    // (incident, firing, delivery): a delivery key always stands for one incident and status.
    let query = (0usize..4, prop::bool::weighted(0.8), prop::option::weighted(0.5, 0u128..3));
    let batches = proptest::collection::vec((proptest::collection::vec(query, 1..6), step), 1..30);
    let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    let result = runner.run(&batches, |batches| {
        runtime.block_on(async {
            let root = unique_key_root("dedup_agree");
            let redis = redis_store(&server, &root).await;
            let memory = MemoryDedupStore::new(window());
            // A second before the Redis store's records change hashes (epochs of a window),
            // so steps cross into the next one and back.
            let mut now = T0 - T0 % WINDOW_MS + WINDOW_MS - 1_000;
            for (i, (queries, step)) in batches.iter().enumerate() {
                now += step;
                let batch: Vec<Query> = queries
                    .iter()
                    .map(|&(f, is_firing, d)| {
                        let query = if is_firing { firing(f) } else { resolved(f) };
                        match d {
                            Some(d) => delivered(query, (f as u128) << 8 | u128::from(is_firing) << 4 | d),
                            None => query,
                        }
                    })
                    .collect();
                let expected = memory.check(&batch, now).await.unwrap();
                let got = redis.check(&batch, now).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&got, &expected, "batch {} at {}", i, now);
                // Every other new incident is placed on a storm's CR (one per batch), the rest
                // on their own, a millisecond later; both stores place and read them alike.
                let binds: Vec<Bind> = batch
                    .iter()
                    .zip(&expected)
                    .enumerate()
                    .filter(|(_, (_, v))| v.decision == Decision::New)
                    .filter_map(|(j, (q, v))| {
                        let first_seen = v.record.as_ref()?.first_seen;
                        let to = if j % 2 == 0 {
                            Placement::Bound(Binding { namespace: "prod".into(), name: format!("storm-{i}") })
                        } else {
                            Placement::Own
                        };
                        Some(Bind { fingerprint: q.fingerprint.clone(), first_seen, to })
                    })
                    .collect();
                let bound = memory.bind(&binds, now + 1).await.unwrap();
                let got = redis.bind(&binds, now + 1).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(got, bound, "binds after batch {}", i);
                // Some repeats' CRs were finished: their windows end a little later, so later
                // steps cross some ends and not others.
                let ends: Vec<WindowEnd> = batch
                    .iter()
                    .zip(&expected)
                    .enumerate()
                    .filter(|(j, (_, v))| v.decision == Decision::Duplicate && (i + j) % 3 == 0)
                    .filter_map(|(_, (q, v))| {
                        let first_seen = v.record.as_ref()?.first_seen;
                        Some(WindowEnd { fingerprint: q.fingerprint.clone(), first_seen, ends_at: now + 1_500 })
                    })
                    .collect();
                let ended = memory.end(&ends, now + 1).await.unwrap();
                let got = redis.end(&ends, now + 1).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(got, ended, "ends after batch {}", i);
                let windows: Vec<WindowRef> = expected
                    .iter()
                    .zip(&batch)
                    .filter_map(|(v, q)| {
                        Some(WindowRef {
                            fingerprint: q.fingerprint.clone(),
                            first_seen: v.record.as_ref()?.first_seen,
                        })
                    })
                    .collect();
                let placed = memory.placements(&windows, now + 2).await.unwrap();
                let got = redis.placements(&windows, now + 2).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(got, placed, "placements after batch {}", i);
            }
            prop_assert_eq!(server.keys_without_ttl(&format!("{root}:*")).await, Vec::<String>::new());
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
