//! Dedup settings (`[dedup]` in the config file).

use std::time::Duration;

use breakwater_keyspace::RedisConfig;
pub use breakwater_keyspace::StoreKind;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// `memory` (default in split mode), `redis`, or `embedded` (on disk; the default of `up`).
    pub store: StoreKind,
    /// Used when `store = "redis"`; keys live under `<key_root>:dedup:`.
    pub redis: RedisConfig,
    /// An incident stays open this long after its last alert (sliding); default 300 (5 min).
    pub window_secs: u64,
    /// A delivery of an alert (Alertmanager's `groupKey` with the alert's fingerprint, status
    /// and `startsAt`; a Kubernetes Event's uid and count) is remembered this long, so its
    /// copies (sender retries, Alertmanager HA peers) count once; default 120. Keep it
    /// shorter than Alertmanager's `group_interval` (default 5 min), or re-notifications of
    /// a still-firing alert stop counting as occurrences.
    pub copy_window_secs: u64,
    /// After the remediation controller finished an incident's CR (a terminal
    /// `status.overallPhase`), its firing alerts still count on that CR, marked as after
    /// completion, for this many seconds (0..=604800) since it finished, unless the incident
    /// was resolved after it finished; then the next one opens a new CR. It keeps an alert
    /// that a remediation did not fix from opening CR after CR. crd-writer applies it. Default
    /// unset: `window_secs`.
    pub cooldown_secs: Option<u64>,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Memory,
            redis: RedisConfig::default(),
            window_secs: 300,
            copy_window_secs: crate::window::DEFAULT_COPY_WINDOW.as_secs(),
            cooldown_secs: None,
        }
    }
}

impl DedupConfig {
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }

    pub fn copy_window(&self) -> Duration {
        Duration::from_secs(self.copy_window_secs)
    }

    /// `cooldown_secs`, or the window when it is unset.
    pub fn cooldown(&self) -> Duration {
        self.cooldown_secs.map_or_else(|| self.window(), Duration::from_secs)
    }

    /// # Errors
    /// A sentence naming the key, the bad value and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=86_400).contains(&self.window_secs) {
            return Err(format!("dedup.window_secs = {} is not allowed: use 1..=86400 seconds", self.window_secs));
        }
        if !(1..=3_600).contains(&self.copy_window_secs) {
            return Err(format!(
                "dedup.copy_window_secs = {} is not allowed: use 1..=3600 seconds, shorter than Alertmanager's group_interval",
                self.copy_window_secs
            ));
        }
        if let Some(cooldown) = self.cooldown_secs.filter(|s| *s > 604_800) {
            return Err(format!("dedup.cooldown_secs = {cooldown} is not allowed: use 0..=604800 seconds"));
        }
        if self.store == StoreKind::Redis {
            self.redis.validate("dedup")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
