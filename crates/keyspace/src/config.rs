//! Redis connection settings of one service.

use serde::{Deserialize, Serialize};

/// Which store a stateful service keeps its state in (`store = "memory"`,
/// `"embedded"` or `"redis"` in its config section).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In-process only: state is lost on restart. The default of the split-mode
    /// services; for tests.
    #[default]
    Memory,
    /// In-process, journaled to a state directory on local disk (`embedded.dir`):
    /// a crashed process loses nothing, a crashed machine at most the last
    /// second. What `breakwater up` uses for dedup and storm.
    Embedded,
    /// Redis: state survives restarts and is shared by replicas.
    Redis,
}

/// Where a service's Redis is and how the service uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`. Each service should connect as
    /// its own ACL user (see `deploy/redis/`).
    pub url: String,
    /// First part of every key; tests give each run its own root.
    pub key_root: String,
    /// Maximum pooled connections.
    pub pool_size: u32,
    /// How long to wait for a connection before the store counts as unavailable.
    pub connect_timeout_ms: u64,
    /// The memory this service's keyspace may use, in bytes. Its Redis must
    /// have at least this much `maxmemory` (reference topology: exactly this,
    /// one Redis per service). Default 64 MiB.
    pub memory_budget_bytes: u64,
    /// How often `maxmemory`, the eviction policy and used memory are checked
    /// against the budget, in seconds. Default 30.
    pub budget_check_secs: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            key_root: "bw".into(),
            pool_size: 16,
            connect_timeout_ms: 1_000,
            memory_budget_bytes: 64 * 1024 * 1024,
            budget_check_secs: 30,
        }
    }
}

impl RedisConfig {
    /// Checks the values a service cannot run with; the message names the key
    /// under `section`, the bad value and what is allowed.
    ///
    /// # Errors
    /// A sentence for the operator.
    pub fn validate(&self, section: &str) -> Result<(), String> {
        if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://") || self.url.starts_with("unix://")) {
            return Err(format!(
                "{section}.redis.url = {:?} is not a Redis URL: use redis://host:port, rediss://host:port or unix:///path",
                self.url
            ));
        }
        if self.key_root.is_empty() || self.key_root.contains([':', ' ', '*', '?', '[']) {
            return Err(format!(
                "{section}.redis.key_root = {:?} is not allowed: use a non-empty name without ':', spaces or glob characters",
                self.key_root
            ));
        }
        if self.pool_size == 0 {
            return Err(format!("{section}.redis.pool_size = 0 is not allowed: use at least 1"));
        }
        if self.connect_timeout_ms == 0 {
            return Err(format!("{section}.redis.connect_timeout_ms = 0 is not allowed: use at least 1"));
        }
        if self.memory_budget_bytes < 1024 * 1024 {
            return Err(format!(
                "{section}.redis.memory_budget_bytes = {} is not allowed: use at least 1048576 (1 MiB)",
                self.memory_budget_bytes
            ));
        }
        if !(1..=3600).contains(&self.budget_check_secs) {
            return Err(format!(
                "{section}.redis.budget_check_secs = {} is not allowed: use 1..=3600",
                self.budget_check_secs
            ));
        }
        Ok(())
    }
}
