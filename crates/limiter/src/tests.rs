use super::*;

/// 10 tokens per second, 10 at most.
const BUCKET: TokenBucket = TokenBucket { rate_per_ms: 0.01, burst: 10 };

fn at(tokens: f64, updated_at: UnixMillis) -> Option<BucketState> {
    Some(BucketState { tokens, updated_at })
}

#[test]
fn missing_bucket_is_full() {
    let (d, b) = BUCKET.decide(None, 4, 1_000);
    assert_eq!(d, Decision { allowed: true, retry_after_ms: 0, tokens_left: 6.0 });
    assert_eq!(b, BucketState { tokens: 6.0, updated_at: 1_000 });
}

#[test]
fn exactly_enough_tokens_is_allowed() {
    let (d, b) = BUCKET.decide(at(3.0, 1_000), 3, 1_000);
    assert!(d.allowed);
    assert_eq!((d.tokens_left, b.tokens), (0.0, 0.0));
}

#[test]
fn one_short_is_refused_with_the_exact_retry_after() {
    // 2 tokens, 3 needed: one more token takes 100 ms at 10/s.
    let (d, b) = BUCKET.decide(at(2.0, 1_000), 3, 1_000);
    assert_eq!(d, Decision { allowed: false, retry_after_ms: 100, tokens_left: 2.0 });
    assert_eq!(b, BucketState { tokens: 2.0, updated_at: 1_000 });
    // ...and after exactly that wait it is allowed.
    assert!(BUCKET.decide(Some(b), 3, 1_100).0.allowed);
    // A fraction of a millisecond short rounds the wait up.
    assert_eq!(BUCKET.decide(at(2.5, 0), 3, 0).0.retry_after_ms, 50);
    assert_eq!(BUCKET.decide(at(2.9995, 0), 3, 0).0.retry_after_ms, 1);
}

#[test]
fn refusal_keeps_the_refill_and_nothing_else() {
    let (d, b) = BUCKET.decide(at(1.0, 1_000), 5, 1_200);
    assert!(!d.allowed);
    assert_eq!(b, BucketState { tokens: 3.0, updated_at: 1_200 });
    assert_eq!(d.retry_after_ms, 200);
}

#[test]
fn refills_over_time() {
    let (d, b) = BUCKET.decide(at(0.0, 0), 1, 250);
    assert!(d.allowed);
    assert_eq!(b, BucketState { tokens: 1.5, updated_at: 250 });
}

#[test]
fn refill_is_capped_at_burst() {
    let (d, _) = BUCKET.decide(at(5.0, 0), 0, 3_600_000);
    assert_eq!(d.tokens_left, 10.0);
    assert_eq!(BUCKET.refill(at(9.0, 0), 100_000), BucketState { tokens: 10.0, updated_at: 100_000 });
}

#[test]
fn big_batch_is_admitted_into_debt_only_from_a_full_bucket() {
    let (d, b) = BUCKET.decide(None, 25, 0);
    assert_eq!(d, Decision { allowed: true, retry_after_ms: 0, tokens_left: -15.0 });
    // Paying off the debt: one signal needs 16 tokens, 1.6 s at 10/s.
    let (d, b) = BUCKET.decide(Some(b), 1, 0);
    assert_eq!(d, Decision { allowed: false, retry_after_ms: 1_600, tokens_left: -15.0 });
    // A big batch needs a full bucket again: 25 s after the first one.
    let (d, _) = BUCKET.decide(Some(b), 25, 2_499);
    assert_eq!((d.allowed, d.retry_after_ms), (false, 1));
    let (d, _) = BUCKET.decide(Some(b), 25, 2_500);
    assert!(d.allowed);
    assert_eq!(d.tokens_left, -15.0);
    // Not full: refused even though the tokens cover most of the batch.
    assert!(!BUCKET.decide(at(9.0, 0), 25, 0).0.allowed);
}

#[test]
fn clock_stepping_back_refills_nothing_and_keeps_updated_at() {
    let (d, b) = BUCKET.decide(at(2.0, 5_000), 1, 4_000);
    assert!(d.allowed);
    assert_eq!(b, BucketState { tokens: 1.0, updated_at: 5_000 });
    // Time then resumes from the later instant: 100 ms after 5_000 refills 1 token.
    assert_eq!(BUCKET.refill(Some(b), 5_100), BucketState { tokens: 2.0, updated_at: 5_100 });
}

#[test]
fn a_full_bucket_is_the_same_as_a_missing_one() {
    // Even with a clock that stepped back, so sweeping or expiring full buckets is invisible.
    for now in [0, 4_000, 5_000, 6_000] {
        assert_eq!(BUCKET.refill(at(10.0, 5_000), now), BUCKET.refill(None, now));
        assert!(BUCKET.is_full_at(BucketState { tokens: 10.0, updated_at: 5_000 }, now));
    }
    assert!(!BUCKET.is_full_at(BucketState { tokens: 9.0, updated_at: 5_000 }, 5_099));
    assert!(BUCKET.is_full_at(BucketState { tokens: 9.0, updated_at: 5_000 }, 5_100));
}

#[test]
fn empty_webhook_is_allowed_and_free_even_in_debt() {
    let (d, b) = BUCKET.decide(at(-4.0, 0), 0, 100);
    assert_eq!(d, Decision { allowed: true, retry_after_ms: 0, tokens_left: -3.0 });
    assert_eq!(b, BucketState { tokens: -3.0, updated_at: 100 });
}

#[test]
fn ttl_is_time_to_full_plus_a_second() {
    assert_eq!(BUCKET.ttl_ms(BucketState { tokens: 10.0, updated_at: 0 }), 1_000);
    assert_eq!(BUCKET.ttl_ms(BucketState { tokens: 9.5, updated_at: 0 }), 1_050);
    assert_eq!(BUCKET.ttl_ms(BucketState { tokens: -15.0, updated_at: 0 }), 3_500);
    // A bucket above a lowered burst still gets a positive TTL.
    assert_eq!(BUCKET.ttl_ms(BucketState { tokens: 1e9, updated_at: 0 }), 1);
    let slow = TokenBucket::new(1e-300, 1);
    assert_eq!(slow.ttl_ms(BucketState { tokens: 0.0, updated_at: 0 }), slow.max_ttl_ms());
    assert_eq!(slow.max_ttl_ms(), 1 << 50);
}

#[test]
fn absurdly_slow_rate_saturates_retry_after() {
    let slow = TokenBucket::new(1e-300, 1);
    assert_eq!(slow.decide(at(0.0, 0), 1, 0).0.retry_after_ms, u64::MAX);
}

#[test]
fn config_rate_is_per_second() {
    let b = TokenBucket::new(1_000.0, 10_000);
    assert_eq!((b.rate_per_ms(), b.burst()), (1.0, 10_000));
}
