//! Where dedup keeps open incidents.

pub mod embedded;
mod memory;
mod redis;

use async_trait::async_trait;
use breakwater_keyspace::KeyspaceError;
use breakwater_signal::UnixMillis;

pub use self::embedded::EmbeddedDedupStore;
pub use self::memory::MemoryDedupStore;
pub use self::redis::RedisDedupStore;
use crate::window::{Placement, Query, Verdict};

/// A placement decision: the incident `fingerprint` whose window opened at
/// `first_seen` is counted on `to` (its own CR or a storm's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub fingerprint: String,
    pub first_seen: UnixMillis,
    pub to: Placement,
}

/// An end for an incident window: the incident `fingerprint` whose window opened at
/// `first_seen` closes at `ends_at` (or its last alert's window, if sooner), however
/// often it fires until then. Its CR was finished, and the cooldown after that ends then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowEnd {
    pub fingerprint: String,
    pub first_seen: UnixMillis,
    pub ends_at: UnixMillis,
}

/// Which incident window: a fingerprint and when its window opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRef {
    pub fingerprint: String,
    pub first_seen: UnixMillis,
}

#[async_trait]
pub trait DedupStore: Send + Sync {
    /// Decides every query at `now` and records the outcome. Returns one
    /// verdict per query, in order; queries are applied in order, atomically,
    /// so two identical queries in one batch are a new incident and a duplicate.
    async fn check(&self, queries: &[Query], now: UnixMillis) -> Result<Vec<Verdict>, KeyspaceError>;

    /// Places incidents whose window is still open and still the one named by
    /// `first_seen`; returns how many applied.
    async fn bind(&self, binds: &[Bind], now: UnixMillis) -> Result<u32, KeyspaceError>;

    /// Sets the end of windows still open and still the ones named by `first_seen`;
    /// returns how many applied.
    async fn end(&self, ends: &[WindowEnd], now: UnixMillis) -> Result<u32, KeyspaceError>;

    /// The current placement of each window, in order; `None` when that
    /// window is no longer open. Reads only.
    async fn placements(&self, windows: &[WindowRef], now: UnixMillis)
    -> Result<Vec<Option<Placement>>, KeyspaceError>;
}
