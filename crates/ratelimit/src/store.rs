//! Where the senders' buckets live.

mod fallback;
mod memory;
mod redis;

use async_trait::async_trait;
use breakwater_keyspace::KeyspaceError;
use breakwater_signal::UnixMillis;

pub use self::fallback::FallbackRateLimitStore;
pub use self::memory::MemoryRateLimitStore;
pub use self::redis::RedisRateLimitStore;
use crate::limiter::Decision;

#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Decides a webhook of `signals` from `sender` at `now` and records the
    /// outcome, atomically: concurrent webhooks of one sender are decided one
    /// after the other, never both from the same tokens.
    async fn check(&self, sender: &str, signals: u32, now: UnixMillis) -> Result<Decision, KeyspaceError>;
}
