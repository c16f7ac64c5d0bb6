//! The rate-limit decision, pure: a token bucket per sender, as a function of
//! the stored bucket, the webhook's size and the time. `MemoryRateLimitStore`
//! calls it; `store/check.lua` is its Redis twin, doing the same float
//! arithmetic in the same order, and a property test holds them to the same
//! answers.

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
            // `as` saturates: an absurdly slow rate waits u64::MAX, not a wrapped value.
            let retry_after_ms = ((need - bucket.tokens) / self.rate_per_ms).ceil() as u64;
            (Decision { allowed: false, retry_after_ms, tokens_left: bucket.tokens }, bucket)
        }
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
