//! The rate-limit decision, pure: a token bucket per sender (and per namespace
//! with an override), as a function of the stored buckets, the webhook's size
//! and the time. [`MemoryLimiter`] calls [`decide_all`]; the ratelimit service's
//! `store/check.lua` is its Redis twin, doing the same float arithmetic in the
//! same order, and a property test holds them to the same answers. [`Limits`]
//! says which buckets a webhook is charged to.
//!
//! Its own crate so that the edge's fallback limiter and the ratelimit service
//! share one implementation without the edge linking the service's Redis store.

use std::collections::HashMap;

mod memory;

pub use memory::MemoryLimiter;

use breakwater_signal::UnixMillis;

/// A sender's bucket as stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketState {
    /// Negative while the sender pays off a webhook larger than the burst.
    pub tokens: f64,
    /// When `tokens` was last refilled; never moves backwards.
    pub updated_at: UnixMillis,
}

/// The answer for one webhook: it is accepted whole or refused whole.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// When refused: how long until this webhook would be accepted; 0 when allowed.
    pub retry_after_ms: u64,
    /// Tokens in the bucket after this decision (negative when in debt).
    pub tokens_left: f64,
}

/// What an answer tells the sender about the bucket closest to running out
/// (the `RateLimit-*` headers): its size, the whole signals left in it, and how
/// long until it is full again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    pub limit: u32,
    pub remaining: u64,
    pub reset_ms: u64,
}

/// One bucket a webhook is charged to: its store key (`b:<sender>` or
/// `n:<namespace>`), its limits and the signals it is charged.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub key: String,
    pub bucket: TokenBucket,
    pub signals: u32,
}

/// The buckets of every sender and namespace: a default, and overrides by
/// sender identity or namespace, matched exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub default: TokenBucket,
    pub senders: HashMap<String, TokenBucket>,
    pub namespaces: HashMap<String, TokenBucket>,
}

impl Limits {
    /// The same bucket for every sender, and no namespace buckets.
    pub fn uniform(bucket: TokenBucket) -> Self {
        Self { default: bucket, senders: HashMap::new(), namespaces: HashMap::new() }
    }

    /// What a webhook of `signals` from `sender`, `namespaces` of them per
    /// namespace, is charged to: the sender's bucket (its override, or the
    /// default), then the bucket of each namespace that has an override.
    pub fn charges(&self, sender: &str, signals: u32, namespaces: &[(String, u32)]) -> Vec<Charge> {
        let bucket = self.senders.get(sender).copied().unwrap_or(self.default);
        let mut charges = vec![Charge { key: format!("b:{sender}"), bucket, signals }];
        for (namespace, n) in namespaces {
            if let Some(bucket) = self.namespaces.get(namespace) {
                charges.push(Charge { key: format!("n:{namespace}"), bucket: *bucket, signals: *n });
            }
        }
        charges
    }
}

/// Decides a webhook charged to every bucket of `charges` at once, from their
/// stored `states` (one per charge, in order), and returns the buckets to
/// store. It is admitted only if every bucket admits it (see
/// [`TokenBucket::decide`]) and then costs each bucket its signals; refused, it
/// changes nothing but the refills.
pub fn decide_all(
    charges: &[Charge],
    states: &[Option<BucketState>],
    now: UnixMillis,
) -> (Decision, Quota, Vec<BucketState>) {
    let mut buckets: Vec<BucketState> = charges
        .iter()
        .zip(states.iter().chain(std::iter::repeat(&None)))
        .map(|(c, s)| c.bucket.refill(*s, now))
        .collect();
    let allowed = charges.iter().zip(&buckets).all(|(c, b)| c.admits(b.tokens));
    if allowed {
        for (c, b) in charges.iter().zip(&mut buckets) {
            b.tokens -= f64::from(c.signals);
        }
    }
    let tokens: Vec<f64> = buckets.iter().map(|b| b.tokens).collect();
    let (decision, quota) = summarize(charges, allowed, &tokens);
    (decision, quota, buckets)
}

/// The answer, from whether the webhook was admitted and each bucket's tokens
/// after the decision. Admitted: the bucket with the fewest tokens left is
/// reported. Refused: the wait is the longest any refusing bucket needs, and
/// that bucket is reported.
pub fn summarize(charges: &[Charge], allowed: bool, tokens: &[f64]) -> (Decision, Quota) {
    let mut reported = 0;
    let mut retry_after_ms = 0;
    let mut refusing = false;
    for (i, (c, t)) in charges.iter().zip(tokens).enumerate() {
        if allowed {
            if tokens.get(reported).is_some_and(|r| t < r) {
                reported = i;
            }
        } else if !c.admits(*t) {
            let wait = c.bucket.wait_ms(c.signals, *t);
            if !refusing || wait > retry_after_ms {
                (retry_after_ms, reported, refusing) = (wait, i, true);
            }
        }
    }
    let tokens_left = tokens.get(reported).copied().unwrap_or(0.0);
    let quota = charges.get(reported).map(|c| c.bucket.quota(tokens_left)).unwrap_or_default();
    (Decision { allowed, retry_after_ms, tokens_left }, quota)
}

impl Charge {
    /// Whether a bucket holding `tokens` admits this charge.
    fn admits(&self, tokens: f64) -> bool {
        self.signals == 0 || tokens >= f64::from(self.signals.min(self.bucket.burst))
    }
}

/// The limit every sender gets: `rate_per_ms` tokens refill per millisecond,
/// up to `burst`; each signal costs one token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    rate_per_ms: f64,
    burst: u32,
}

impl TokenBucket {
    /// `signals_per_second` must be positive and finite (the config checks it).
    pub fn new(signals_per_second: f64, burst: u32) -> Self {
        Self { rate_per_ms: signals_per_second / 1_000.0, burst }
    }

    pub fn rate_per_ms(&self) -> f64 {
        self.rate_per_ms
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The bucket at `now`. A missing bucket is full; so is a bucket that
    /// refilled to the brim, whatever its `updated_at`, which makes dropping a
    /// full bucket (sweep, TTL) the same as keeping it. A clock that went
    /// backwards refills nothing.
    pub fn refill(&self, state: Option<BucketState>, now: UnixMillis) -> BucketState {
        let burst = f64::from(self.burst);
        match state {
            Some(s) if now > s.updated_at => {
                let elapsed = (now - s.updated_at) as f64;
                BucketState { tokens: (s.tokens + elapsed * self.rate_per_ms).min(burst), updated_at: now }
            }
            Some(s) if s.tokens < burst => s,
            _ => BucketState { tokens: burst, updated_at: now },
        }
    }

    /// Whether the bucket is full at `now`, so forgetting it changes nothing.
    pub fn is_full_at(&self, state: BucketState, now: UnixMillis) -> bool {
        self.refill(Some(state), now).tokens >= f64::from(self.burst)
    }

    /// Decides a webhook of `signals` at `now` and returns the bucket to store.
    ///
    /// The webhook needs `min(signals, burst)` tokens and, when allowed, costs
    /// `signals`: a webhook larger than the burst is admitted only from a full
    /// bucket and leaves it in debt, so the average rate still holds. A refusal
    /// changes nothing but the refill. An empty webhook is always allowed and
    /// costs nothing.
    pub fn decide(&self, state: Option<BucketState>, signals: u32, now: UnixMillis) -> (Decision, BucketState) {
        let mut bucket = self.refill(state, now);
        if signals == 0 {
            return (Decision { allowed: true, retry_after_ms: 0, tokens_left: bucket.tokens }, bucket);
        }
        let need = f64::from(signals.min(self.burst));
        if bucket.tokens >= need {
            bucket.tokens -= f64::from(signals);
            (Decision { allowed: true, retry_after_ms: 0, tokens_left: bucket.tokens }, bucket)
        } else {
            let retry_after_ms = self.wait_ms(signals, bucket.tokens);
            (Decision { allowed: false, retry_after_ms, tokens_left: bucket.tokens }, bucket)
        }
    }

    /// How long a bucket holding `tokens` takes to admit `signals`.
    fn wait_ms(&self, signals: u32, tokens: f64) -> u64 {
        let need = f64::from(signals.min(self.burst));
        // `as` saturates: an absurdly slow rate waits u64::MAX, not a wrapped value.
        ((need - tokens) / self.rate_per_ms).ceil().max(0.0) as u64
    }

    /// The [`Quota`] of a bucket holding `tokens`.
    pub fn quota(&self, tokens: f64) -> Quota {
        let reset_ms = ((f64::from(self.burst) - tokens) / self.rate_per_ms).ceil().max(0.0) as u64;
        Quota { limit: self.burst, remaining: tokens.max(0.0).floor() as u64, reset_ms }
    }

    /// How long Redis keeps `state`: until it would be full again, plus a
    /// second of slack, so an idle sender's key vanishes once forgetting it
    /// changes nothing. At least 1 ms, at most [`Self::max_ttl_ms`].
    pub fn ttl_ms(&self, state: BucketState) -> u64 {
        let ms = ((f64::from(self.burst) - state.tokens) / self.rate_per_ms).ceil() + 1_000.0;
        (ms.max(1.0) as u64).min(self.max_ttl_ms())
    }

    /// The longest any bucket can need to fill up again, plus the second of
    /// slack every bucket's TTL carries: the deepest debt is a full bucket
    /// that admitted `u32::MAX` signals. Bounded so Redis accepts it as `PX`.
    pub fn max_ttl_ms(&self) -> u64 {
        const LIMIT_MS: u64 = 1 << 50;
        let ms = (f64::from(u32::MAX) / self.rate_per_ms).ceil() as u64;
        ms.saturating_add(1_000).min(LIMIT_MS)
    }
}

#[cfg(test)]
mod tests;
