//! Storm settings (`[storm]` in the config file).

use std::time::Duration;

use breakwater_keyspace::RedisConfig;
pub use breakwater_keyspace::StoreKind;
use serde::{Deserialize, Serialize};

use crate::detector::StormRules;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StormConfig {
    /// `memory` (default; `breakwater up` defaults to `embedded`), `embedded`
    /// (on disk in `embedded.dir`) or `redis`.
    pub store: StoreKind,
    /// Used when `store = "redis"`; keys live under `<key_root>:storm:`.
    pub redis: RedisConfig,
    /// More than this many alerts of one (namespace, alertname) in a window is
    /// a rate storm; default 10.
    pub rate_threshold: u64,
    /// More than this many distinct resources in a window is a pattern storm;
    /// default 5.
    pub pattern_threshold: u64,
    /// A window closes this long after its last alert; default 60.
    pub inactivity_secs: u64,
    /// A window closes this long after it opened, however busy; default 300.
    pub max_window_secs: u64,
    /// Most resources listed on a storm CR; the rest are counted; default 100.
    pub affected_resources_cap: u64,
    /// A storm's alert counter lives this long after its last alert, so
    /// repeats of folded alerts are counted on the storm CR; at least
    /// `max_window_secs` and the dedup window. Default 900.
    pub count_ttl_secs: u64,
    /// How long a repeat counted on a storm CR is remembered by its delivery, so a copy of
    /// it (a retry of a request that died after storm counted it) adds nothing; keep it
    /// equal to `dedup.copy_window_secs`. Default 120.
    pub copy_window_secs: u64,
}

impl Default for StormConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Memory,
            redis: RedisConfig::default(),
            rate_threshold: 10,
            pattern_threshold: 5,
            inactivity_secs: 60,
            max_window_secs: 300,
            affected_resources_cap: 100,
            count_ttl_secs: 900,
            copy_window_secs: 120,
        }
    }
}

impl StormConfig {
    pub fn rules(&self) -> StormRules {
        StormRules::new(
            self.rate_threshold,
            self.pattern_threshold,
            Duration::from_secs(self.inactivity_secs),
            Duration::from_secs(self.max_window_secs),
            self.affected_resources_cap,
        )
        .with_count_ttl(Duration::from_secs(self.count_ttl_secs))
        .with_copy_window(Duration::from_secs(self.copy_window_secs))
    }

    /// # Errors
    /// A sentence naming the key, the bad value and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        // A threshold of 0 would make every alert a storm (reference gotcha §4.2).
        if self.rate_threshold == 0 {
            return Err("storm.rate_threshold = 0 is not allowed: use 1 or more alerts per window".into());
        }
        if self.pattern_threshold == 0 {
            return Err("storm.pattern_threshold = 0 is not allowed: use 1 or more distinct resources".into());
        }
        if !(1..=86_400).contains(&self.inactivity_secs) {
            return Err(format!("storm.inactivity_secs = {} is not allowed: use 1..=86400", self.inactivity_secs));
        }
        if self.max_window_secs < self.inactivity_secs || self.max_window_secs > 86_400 {
            return Err(format!(
                "storm.max_window_secs = {} is not allowed: use storm.inactivity_secs ({})..=86400",
                self.max_window_secs, self.inactivity_secs
            ));
        }
        if self.affected_resources_cap <= self.pattern_threshold || self.affected_resources_cap > 1_000 {
            return Err(format!(
                "storm.affected_resources_cap = {} is not allowed: use more than storm.pattern_threshold ({}) and at most 1000",
                self.affected_resources_cap, self.pattern_threshold
            ));
        }
        if self.count_ttl_secs < self.max_window_secs || self.count_ttl_secs > 7 * 86_400 {
            return Err(format!(
                "storm.count_ttl_secs = {} is not allowed: use storm.max_window_secs ({})..=604800",
                self.count_ttl_secs, self.max_window_secs
            ));
        }
        if !(1..=3_600).contains(&self.copy_window_secs) {
            return Err(format!(
                "storm.copy_window_secs = {} is not allowed: use 1..=3600 seconds, as dedup.copy_window_secs",
                self.copy_window_secs
            ));
        }
        if self.store == StoreKind::Redis {
            self.redis.validate("storm")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_thresholds_are_rejected_with_the_key_named() {
        let c = StormConfig { rate_threshold: 0, ..Default::default() };
        assert!(c.validate().unwrap_err().starts_with("storm.rate_threshold = 0"));
        let c = StormConfig { pattern_threshold: 0, ..Default::default() };
        assert!(c.validate().unwrap_err().starts_with("storm.pattern_threshold = 0"));
        let c = StormConfig { max_window_secs: 10, ..Default::default() };
        assert!(c.validate().unwrap_err().contains("storm.max_window_secs = 10"));
        assert_eq!(StormConfig::default().validate(), Ok(()));
    }
}
