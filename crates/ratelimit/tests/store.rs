//! The store contract: one body, run against the memory store and against the
//! Redis store on a real `redis-server`, must give the same decisions, and
//! every Redis key must carry a TTL.

use std::sync::Arc;

use breakwater_keyspace::{Keyspace, RedisConfig};
use breakwater_ratelimit::{Charge, Decision, MemoryRateLimitStore, RateLimitStore, RedisRateLimitStore, TokenBucket};
use breakwater_signal::UnixMillis;
use breakwater_testkit::{RedisServer, unique_key_root};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const T0: UnixMillis = 1_700_000_000_000;

/// 10 signals per second, 10 at most.
fn bucket() -> TokenBucket {
    TokenBucket::new(10.0, 10)
}

fn allowed(tokens_left: f64) -> Decision {
    Decision { allowed: true, retry_after_ms: 0, tokens_left }
}

fn limited(retry_after_ms: u64, tokens_left: f64) -> Decision {
    Decision { allowed: false, retry_after_ms, tokens_left }
}

/// The contract, as (sender, signals, now, expected decision).
fn contract_steps() -> Vec<(&'static str, u32, UnixMillis, Decision)> {
    let a = "10.0.0.1:5000";
    let b = "[::1]:80";
    vec![
        (a, 4, T0, allowed(6.0)),
        // Exactly enough tokens is allowed.
        (a, 6, T0, allowed(0.0)),
        // One short: one token takes 100 ms.
        (a, 1, T0, limited(100, 0.0)),
        (a, 1, T0 + 100, allowed(0.0)),
        // Empty webhooks are free.
        (a, 0, T0 + 100, allowed(0.0)),
        // Refill caps at the burst, and a batch bigger than the burst goes into debt from full.
        (a, 25, T0 + 10_000, allowed(-15.0)),
        (a, 1, T0 + 10_000, limited(1_600, -15.0)),
        (a, 0, T0 + 10_000, allowed(-15.0)),
        // A clock stepping back refills nothing.
        (a, 1, T0 + 5_000, limited(1_600, -15.0)),
        (a, 1, T0 + 11_600, allowed(0.0)),
        // Senders have their own buckets.
        (b, 10, T0, allowed(0.0)),
        // A batch bigger than the burst waits for a full bucket: 9.9 tokens more.
        (b, 11, T0 + 10, limited(990, 0.1)),
    ]
}

/// A webhook charged to `sender`'s bucket only.
fn sender_only(sender: &str, bucket: TokenBucket, signals: u32) -> Vec<Charge> {
    vec![Charge { key: format!("b:{sender}"), bucket, signals }]
}

async fn honours_the_contract(store: &dyn RateLimitStore) {
    for (i, (sender, signals, now, expected)) in contract_steps().into_iter().enumerate() {
        let got =
            store.check(&sender_only(sender, bucket(), signals), now).await.unwrap_or_else(|e| panic!("step {i}: {e}"));
        assert_eq!(got.0, expected, "step {i}: {signals} signals from {sender} at T0{:+}", now - T0);
    }
    // Charged to a namespace bucket too, a webhook needs room in both, and is charged to
    // both or neither.
    let c = "10.0.0.3";
    let ns = TokenBucket::new(1.0, 3);
    let both = |signals| {
        let mut charges = sender_only(c, bucket(), signals);
        charges.push(Charge { key: "n:team-a".to_owned(), bucket: ns, signals });
        charges
    };
    let (first, quota) = store.check(&both(2), T0).await.unwrap();
    assert_eq!(first, allowed(1.0), "the namespace bucket, with 1 left, is reported");
    assert_eq!((quota.limit, quota.remaining, quota.reset_ms), (3, 1, 2_000));
    let (refused, quota) = store.check(&both(2), T0).await.unwrap();
    assert_eq!(refused, limited(1_000, 1.0));
    assert_eq!(quota.limit, 3);
    let (own, _) = store.check(&sender_only(c, bucket(), 8), T0).await.unwrap();
    assert_eq!(own, allowed(0.0), "the refused webhook cost the sender nothing");
}

async fn redis_store(server: &RedisServer, key_root: &str) -> RedisRateLimitStore {
    let config = RedisConfig { url: server.url(), key_root: key_root.to_owned(), ..Default::default() };
    let keyspace = Keyspace::from_config(&config, "rl").unwrap_or_else(|e| panic!("keyspace: {e}"));
    RedisRateLimitStore::new(keyspace)
}

async fn assert_every_key_has_a_ttl(server: &RedisServer, key_root: &str) {
    let pattern = format!("{key_root}:*");
    assert_eq!(server.keys_without_ttl(&pattern).await, Vec::<String>::new());
}

#[tokio::test]
async fn memory_store_honours_the_contract() {
    honours_the_contract(&MemoryRateLimitStore::new()).await;
}

#[tokio::test]
async fn redis_store_honours_the_contract() {
    let server = RedisServer::start().await;
    let root = unique_key_root("ratelimit_contract");
    let store = redis_store(&server, &root).await;
    honours_the_contract(&store).await;

    assert_every_key_has_a_ttl(&server, &root).await;
    // The bucket ends empty: it is full again in 1 s, and the key lives one second more.
    let key = store.bucket_key("b:10.0.0.1:5000");
    assert_eq!(key, format!("{root}:rl:b:10.0.0.1:5000"));
    let pttl: i64 = server.admin_command(&["PTTL", &key]).await.parse().unwrap();
    assert!((1..=2_000).contains(&pttl), "PTTL {pttl}");
    assert_eq!(server.admin_command(&["GET", &key]).await, format!("0|{}", T0 + 11_600));
}

#[tokio::test]
async fn concurrent_webhooks_never_spend_the_same_tokens() {
    let server = RedisServer::start().await;
    let root = unique_key_root("ratelimit_concurrent");
    let redis: Arc<dyn RateLimitStore> = Arc::new(redis_store(&server, &root).await);
    let memory: Arc<dyn RateLimitStore> = Arc::new(MemoryRateLimitStore::new());
    for store in [memory, redis] {
        let calls = (0..20).map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.check(&sender_only("10.0.0.9", bucket(), 1), T0).await.unwrap().0.allowed })
        });
        let mut admitted = 0;
        for call in calls.collect::<Vec<_>>() {
            admitted += usize::from(call.await.unwrap());
        }
        assert_eq!(admitted, 10);
    }
}

/// A webhook: which of a few senders, how many signals, how many of them for a
/// namespace with a bucket of its own, and how far the clock moved since the
/// previous one (sometimes backwards).
fn webhooks() -> impl Strategy<Value = Vec<(usize, u32, u32, i64)>> {
    let signals = prop_oneof![4 => 0u32..20, 1 => 0u32..200];
    let step = prop_oneof![4 => 0i64..500, 2 => 500i64..20_000, 1 => -2_000i64..0];
    proptest::collection::vec((0usize..3, signals, 0u32..20, step), 1..40)
}

/// Rates and bursts, including ones whose arithmetic is not exact in binary.
fn buckets() -> impl Strategy<Value = TokenBucket> {
    (prop_oneof![Just(1_000.0), Just(3.0), 0.1f64..10_000.0], 1u32..100)
        .prop_map(|(rate, burst)| TokenBucket::new(rate, burst))
}

#[test]
fn memory_and_redis_agree_on_random_sequences() {
    const SENDERS: [&str; 3] = ["10.0.0.1:5000", "[::1]:80", "odd|sender"];
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let server = runtime.block_on(RedisServer::start());
    let mut runner = TestRunner::new(Config { cases: 32, failure_persistence: None, ..Config::default() });
    let result = runner.run(&(buckets(), buckets(), webhooks()), |(bucket, ns_bucket, webhooks)| {
        runtime.block_on(async {
            let root = unique_key_root("ratelimit_agree");
            let redis = redis_store(&server, &root).await;
            let memory = MemoryRateLimitStore::new();
            let mut now = T0;
            for (i, &(sender, signals, in_ns, step)) in webhooks.iter().enumerate() {
                now += step;
                let sender = SENDERS[sender];
                let mut charges = sender_only(sender, bucket, signals);
                if in_ns > 0 {
                    let signals = in_ns.min(signals);
                    charges.push(Charge { key: "n:team-a".to_owned(), bucket: ns_bucket, signals });
                }
                let expected = memory.check(&charges, now).await.unwrap();
                let got = redis.check(&charges, now).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(
                    got,
                    expected,
                    "webhook {}: {} signals from {} at T0{:+}",
                    i,
                    signals,
                    sender,
                    now - T0
                );
            }
            prop_assert_eq!(server.keys_without_ttl(&format!("{root}:*")).await, Vec::<String>::new());
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
