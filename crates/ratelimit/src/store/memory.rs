//! In-process rate-limit store: the embedded default, and the fallback the
//! degradation table names when the Redis store fails.

use async_trait::async_trait;
use breakwater_keyspace::KeyspaceError;
use breakwater_limiter::{BucketState, Charge, Decision, MemoryLimiter, Quota};
use breakwater_signal::UnixMillis;

use super::RateLimitStore;

/// [`MemoryLimiter`] as a [`RateLimitStore`]: it cannot fail.
#[derive(Debug, Default)]
pub struct MemoryRateLimitStore(MemoryLimiter);

impl MemoryRateLimitStore {
    pub fn new() -> Self {
        Self(MemoryLimiter::new())
    }

    /// Buckets held right now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The stored bucket under `key` (`b:<sender>`, `n:<namespace>`), if any (for tests).
    pub fn bucket(&self, key: &str) -> Option<BucketState> {
        self.0.bucket(key)
    }
}

#[async_trait]
impl RateLimitStore for MemoryRateLimitStore {
    async fn check(&self, charges: &[Charge], now: UnixMillis) -> Result<(Decision, Quota), KeyspaceError> {
        Ok(self.0.check(charges, now))
    }
}
