//! Dedup settings (`[dedup]` in the config file).

use std::time::Duration;

use breakwater_keyspace::RedisConfig;
pub use breakwater_keyspace::StoreKind;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// `memory` (default) or `redis`.
    pub store: StoreKind,
    /// Used when `store = "redis"`; keys live under `<key_root>:dedup:`.
    pub redis: RedisConfig,
    /// An incident stays open this long after its last alert (sliding); default 300 (5 min).
    pub window_secs: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self { store: StoreKind::Memory, redis: RedisConfig::default(), window_secs: 300 }
    }
}

impl DedupConfig {
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }

    /// # Errors
    /// A sentence naming the key, the bad value and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=86_400).contains(&self.window_secs) {
            return Err(format!("dedup.window_secs = {} is not allowed: use 1..=86400 seconds", self.window_secs));
        }
        if self.store == StoreKind::Redis {
            self.redis.validate("dedup")?;
        }
        Ok(())
    }
}
