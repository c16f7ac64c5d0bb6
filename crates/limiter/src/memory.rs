//! Buckets in process: the ratelimit service's embedded store, and the edge's
//! fallback while the ratelimit service cannot be reached.

use std::collections::HashMap;
use std::sync::Mutex;

use breakwater_signal::UnixMillis;

use crate::{BucketState, Charge, Decision, Quota, TokenBucket, decide_all};

/// Buckets in a map, each with the limits it was last charged under; full ones
/// (the same as no bucket) are swept whenever the map has doubled since the
/// last sweep, so memory follows the number of senders that recently sent.
#[derive(Debug)]
pub struct MemoryLimiter {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<String, (BucketState, TokenBucket)>,
    sweep_at: usize,
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLimiter {
    pub fn new() -> Self {
        Self { state: Mutex::new(State { buckets: HashMap::new(), sweep_at: 1024 }) }
    }

    /// Decides a webhook charged to every bucket of `charges` (see [`decide_all`]; the
    /// sender's first) at `now` and records the outcome, under one lock.
    pub fn check(&self, charges: &[Charge], now: UnixMillis) -> (Decision, Quota) {
        let mut state = self.lock();
        let stored: Vec<Option<BucketState>> =
            charges.iter().map(|c| state.buckets.get(&c.key).map(|(b, _)| *b)).collect();
        let (decision, quota, next) = decide_all(charges, &stored, now);
        for (charge, next) in charges.iter().zip(next) {
            match state.buckets.get_mut(&charge.key) {
                Some(b) => *b = (next, charge.bucket),
                None => {
                    state.buckets.insert(charge.key.clone(), (next, charge.bucket));
                }
            }
        }
        if state.buckets.len() >= state.sweep_at {
            state.buckets.retain(|_, (b, limits)| !limits.is_full_at(*b, now));
            state.sweep_at = (state.buckets.len() * 2).max(1024);
        }
        (decision, quota)
    }

    /// Buckets held right now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored bucket under `key` (`b:<sender>`, `n:<namespace>`), if any (for tests).
    pub fn bucket(&self, key: &str) -> Option<BucketState> {
        self.lock().buckets.get(key).map(|(state, _)| *state)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a bucket half-written
        // (each change is one insert), so a poisoned map is still sound.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(key: &str, signals: u32) -> Vec<Charge> {
        vec![Charge { key: key.to_owned(), bucket: TokenBucket::new(1_000.0, 10), signals }]
    }

    #[test]
    fn sweeps_full_buckets_once_the_map_has_doubled() {
        let limiter = MemoryLimiter::new();
        for i in 0..1023 {
            limiter.check(&charge(&format!("b:10.0.0.{i}"), 1), 0);
        }
        assert_eq!(limiter.len(), 1023);
        // 10 ms later every bucket is full again except the newest one.
        limiter.check(&charge("b:busy", 10), 10);
        assert_eq!(limiter.len(), 1);
        assert_eq!(limiter.bucket("b:busy"), Some(BucketState { tokens: 0.0, updated_at: 10 }));
    }
}
