//! Where the storm service keeps its windows.

pub mod embedded;
mod memory;
mod redis;

use async_trait::async_trait;
use breakwater_keyspace::KeyspaceError;
use breakwater_signal::UnixMillis;

pub use self::embedded::EmbeddedStormStore;
pub use self::memory::MemoryStormStore;
pub use self::redis::RedisStormStore;
use crate::detector::Verdict;

/// One new incident to fold or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StormQuery {
    pub namespace: String,
    pub alert_name: String,
    pub resource_id: String,
    /// The delivery of the alert: when it is counted on a storm, it is remembered, so a
    /// copy's count (see [`StormCount::delivery`]) adds nothing.
    pub delivery: Option<u128>,
}

#[async_trait]
pub trait StormStore: Send + Sync {
    /// Decides every query at `now` and records it. Returns one verdict per
    /// query, in order; the batch is applied in order, atomically.
    async fn detect(&self, queries: &[StormQuery], now: UnixMillis) -> Result<Vec<Verdict>, KeyspaceError>;

    /// Adds `alerts` to the counter of each storm CR `name` (repeats of alerts
    /// folded into it) and returns each counter's total, in order. A counter the
    /// store no longer holds (its state was lost) answers 0 and is not created
    /// again: a total counted from 0 would fall behind the storm CR's count.
    async fn count(&self, storms: &[StormCount], now: UnixMillis) -> Result<Vec<u64>, KeyspaceError>;
}

/// Repeats to count on one storm CR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StormCount {
    /// The storm CR name, `storm-<id>-<window start>`.
    pub name: String,
    pub alerts: u64,
    /// The delivery these alerts came with (see the dedup service's delivery keys): a
    /// delivery counted before within the copy window adds nothing again.
    pub delivery: Option<u128>,
}
