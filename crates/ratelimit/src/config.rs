//! Rate-limit settings (`[ratelimit]` in the config file).

use breakwater_keyspace::RedisConfig;
pub use breakwater_keyspace::StoreKind;
use serde::{Deserialize, Serialize};

use crate::limiter::TokenBucket;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `memory` (default) or `redis`. Not `embedded`: a token bucket refills
    /// by itself, so its state is not worth a disk write per request.
    pub store: StoreKind,
    /// Used when `store = "redis"`; keys live under `<key_root>:rl:`.
    pub redis: RedisConfig,
    /// Sustained rate each sender may push, in signals per second; default 1000.
    pub signals_per_second: f64,
    /// Bucket size: how many signals a sender may push at once after being
    /// quiet; default 10000.
    pub burst: u32,
    /// `false` admits everything without touching the store; default `true`.
    pub enabled: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Memory,
            redis: RedisConfig::default(),
            signals_per_second: 1_000.0,
            burst: 10_000,
            enabled: true,
        }
    }
}

/// Why `ratelimit.store = "embedded"` is refused.
pub(crate) const EMBEDDED_REFUSED: &str = "ratelimit.store = \"embedded\" is not allowed: use \"memory\" or \"redis\"; \
     a token bucket refills by itself, so rate-limit state needs no disk";

impl RateLimitConfig {
    /// The bucket every sender gets.
    pub fn bucket(&self) -> TokenBucket {
        TokenBucket::new(self.signals_per_second, self.burst)
    }

    /// # Errors
    /// A sentence naming the key, the bad value and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.signals_per_second.is_finite() && self.signals_per_second > 0.0) {
            return Err(format!(
                "ratelimit.signals_per_second = {} is not allowed: use a positive number",
                self.signals_per_second
            ));
        }
        if self.burst == 0 {
            return Err("ratelimit.burst = 0 is not allowed: use at least 1".to_owned());
        }
        match self.store {
            StoreKind::Memory => {}
            StoreKind::Embedded => return Err(EMBEDDED_REFUSED.to_owned()),
            StoreKind::Redis => self.redis.validate("ratelimit")?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(RateLimitConfig::default().validate(), Ok(()));
    }

    #[test]
    fn messages_name_key_value_and_what_is_allowed() {
        let zero_rate = RateLimitConfig { signals_per_second: 0.0, ..Default::default() };
        assert_eq!(
            zero_rate.validate(),
            Err("ratelimit.signals_per_second = 0 is not allowed: use a positive number".to_owned())
        );
        let nan_rate = RateLimitConfig { signals_per_second: f64::NAN, ..Default::default() };
        assert!(nan_rate.validate().is_err());
        let zero_burst = RateLimitConfig { burst: 0, ..Default::default() };
        assert_eq!(zero_burst.validate(), Err("ratelimit.burst = 0 is not allowed: use at least 1".to_owned()));
        let bad_redis = RateLimitConfig {
            store: StoreKind::Redis,
            redis: RedisConfig { pool_size: 0, ..Default::default() },
            ..Default::default()
        };
        assert_eq!(
            bad_redis.validate(),
            Err("ratelimit.redis.pool_size = 0 is not allowed: use at least 1".to_owned())
        );
        let embedded = RateLimitConfig { store: StoreKind::Embedded, ..Default::default() };
        assert!(embedded.validate().unwrap_err().starts_with("ratelimit.store = \"embedded\" is not allowed"));
    }
}
