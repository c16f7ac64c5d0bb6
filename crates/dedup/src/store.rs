//! Where dedup keeps open incidents.

mod memory;
mod redis;

use async_trait::async_trait;
use breakwater_keyspace::KeyspaceError;
use breakwater_signal::UnixMillis;

pub use self::memory::MemoryDedupStore;
pub use self::redis::RedisDedupStore;
use crate::window::{Binding, Query, Verdict};

/// A binding request: point the incident `fingerprint` whose window opened at
/// `first_seen` at `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub fingerprint: String,
    pub first_seen: UnixMillis,
    pub to: Binding,
}

#[async_trait]
pub trait DedupStore: Send + Sync {
    /// Decides every query at `now` and records the outcome. Returns one
    /// verdict per query, in order; queries are applied in order, atomically,
    /// so two identical queries in one batch are a new incident and a duplicate.
    async fn check(&self, queries: &[Query], now: UnixMillis) -> Result<Vec<Verdict>, KeyspaceError>;

    /// Applies bindings to windows that are still open and still the window
    /// named by `first_seen`; returns how many applied.
    async fn bind(&self, binds: &[Bind], now: UnixMillis) -> Result<u32, KeyspaceError>;
}
