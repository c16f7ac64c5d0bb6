//! In-process rate-limit store: the embedded default, and the fallback the
//! degradation table names when the Redis store fails.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use breakwater_keyspace::KeyspaceError;
use breakwater_signal::UnixMillis;

use super::RateLimitStore;
use crate::limiter::{BucketState, Decision, TokenBucket};

/// Buckets in a map; full ones (the same as no bucket) are swept whenever the
/// map has doubled since the last sweep, so memory follows the number of
/// senders that recently sent.
#[derive(Debug)]
pub struct MemoryRateLimitStore {
    bucket: TokenBucket,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<String, BucketState>,
    sweep_at: usize,
}

impl MemoryRateLimitStore {
    pub fn new(bucket: TokenBucket) -> Self {
        Self { bucket, state: Mutex::new(State { buckets: HashMap::new(), sweep_at: 1024 }) }
    }

    /// Buckets held right now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored bucket of `sender`, if any (for tests).
    pub fn bucket(&self, sender: &str) -> Option<BucketState> {
        self.lock().buckets.get(sender).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a bucket half-written
        // (each change is one insert), so a poisoned map is still sound.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl RateLimitStore for MemoryRateLimitStore {
    async fn check(&self, sender: &str, signals: u32, now: UnixMillis) -> Result<Decision, KeyspaceError> {
        let mut state = self.lock();
        let (decision, next) = self.bucket.decide(state.buckets.get(sender).copied(), signals, now);
        match state.buckets.get_mut(sender) {
            Some(b) => *b = next,
            None => {
                state.buckets.insert(sender.to_owned(), next);
            }
        }
        if state.buckets.len() >= state.sweep_at {
            let bucket = self.bucket;
            state.buckets.retain(|_, b| !bucket.is_full_at(*b, now));
            state.sweep_at = (state.buckets.len() * 2).max(1024);
        }
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sweeps_full_buckets_once_the_map_has_doubled() {
        let store = MemoryRateLimitStore::new(TokenBucket::new(1_000.0, 10));
        for i in 0..1023 {
            store.check(&format!("10.0.0.{i}"), 1, 0).await.unwrap();
        }
        assert_eq!(store.len(), 1023);
        // 10 ms later every bucket is full again except the newest one.
        store.check("busy", 10, 10).await.unwrap();
        assert_eq!(store.len(), 1);
        assert_eq!(store.bucket("busy"), Some(BucketState { tokens: 0.0, updated_at: 10 }));
    }
}
