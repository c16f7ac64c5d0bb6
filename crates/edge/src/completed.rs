//! Deliveries this edge has answered 2xx: every write they needed was applied or journaled.
//!
//! A copy of such a delivery (a retry that crossed our answer, a second Alertmanager peer's
//! notification, a replayed body) has nothing left to complete, so the edge skips the
//! storm count and the CR write a copy otherwise makes to finish a half-done first attempt.
//! It is a positive cache only: a copy it does not know (another edge answered the first
//! attempt, or this edge restarted) completes its delivery as before, so forgetting is safe.

use std::collections::HashSet;
use std::sync::Mutex;

/// Delivery keys remembered per generation; two generations are kept, so at most twice this
/// (16 bytes a key plus the set's overhead: a few MiB).
const GENERATION: usize = 131_072;

/// A bounded set of the delivery keys (`breakwater_signal::parse_delivery_key`) this edge
/// answered 2xx.
#[derive(Debug, Default)]
pub struct CompletedDeliveries {
    generations: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    current: HashSet<u128>,
    previous: HashSet<u128>,
}

impl CompletedDeliveries {
    pub fn contains(&self, key: u128) -> bool {
        let generations = self.lock();
        generations.current.contains(&key) || generations.previous.contains(&key)
    }

    /// Remembers `keys`; when the current generation is full, the previous one is forgotten.
    pub fn insert_all(&self, keys: impl IntoIterator<Item = u128>) {
        let mut generations = self.lock();
        for key in keys {
            if generations.current.len() >= GENERATION {
                generations.previous = std::mem::take(&mut generations.current);
            }
            generations.current.insert(key);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // Each change is one insert or one swap: a panic elsewhere cannot leave it half-changed.
        self.generations.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_keys_and_forgets_the_oldest_generation_only() {
        let completed = CompletedDeliveries::default();
        completed.insert_all([1, 2]);
        assert!(completed.contains(1) && completed.contains(2) && !completed.contains(3));
        // Fill one generation past key 1 and 2: they move to the previous one, still known.
        completed.insert_all(10..10 + GENERATION as u128);
        assert!(completed.contains(1), "a full generation keeps the previous one");
        // Another full generation: keys 1 and 2 are forgotten, the bound holds.
        completed.insert_all(1_000_000..1_000_000 + GENERATION as u128);
        assert!(!completed.contains(1) && !completed.contains(2));
        let generations = completed.lock();
        assert!(generations.current.len() + generations.previous.len() <= 2 * GENERATION);
    }
}
