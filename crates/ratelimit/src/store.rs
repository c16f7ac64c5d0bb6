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
use crate::limiter::{Charge, Decision, Quota};

#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Decides a webhook charged to every bucket of `charges` (see
    /// [`crate::limiter::decide_all`]; the sender's first) at `now` and records
    /// the outcome, atomically: concurrent webhooks touching one bucket are
    /// decided one after the other, never both from the same tokens.
    async fn check(&self, charges: &[Charge], now: UnixMillis) -> Result<(Decision, Quota), KeyspaceError>;
}
