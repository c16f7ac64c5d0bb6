//! Rate-limit settings (`[ratelimit]` in the config file).

use breakwater_keyspace::RedisConfig;
pub use breakwater_keyspace::StoreKind;
use serde::{Deserialize, Serialize};

use crate::limiter::{Limits, TokenBucket};

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
    /// Most signals one check may charge (a webhook's alerts); a larger
    /// `signal_count` is refused with `INVALID_ARGUMENT` and charges nothing.
    /// It bounds the debt one call can put a sender in to this many signals
    /// (200 s at the default rate). Keep it at least `crd_writer.max_batch`,
    /// the most alerts a webhook may carry; default 200000.
    pub max_signals_per_check: u32,
    /// Limits other than the default: `[[ratelimit.overrides]]` entries, each
    /// with exactly one of `sender` (a sender identity, matched exactly: a
    /// client address such as `10.0.0.7`, or an authenticated identity) or
    /// `namespace` (a bucket of its own that every webhook with signals for
    /// that namespace must also fit, shared by all senders), and its own
    /// `signals_per_second` and `burst`. Default none.
    pub overrides: Vec<Override>,
}

/// One `[[ratelimit.overrides]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// The sender identity this limit replaces the default for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The namespace whose own bucket this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Sustained rate, in signals per second.
    pub signals_per_second: f64,
    /// Bucket size.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Memory,
            redis: RedisConfig::default(),
            signals_per_second: 1_000.0,
            burst: 10_000,
            enabled: true,
            max_signals_per_check: 200_000,
            overrides: Vec::new(),
        }
    }
}

/// Why `ratelimit.store = "embedded"` is refused.
pub(crate) const EMBEDDED_REFUSED: &str = "ratelimit.store = \"embedded\" is not allowed: use \"memory\" or \"redis\"; \
     a token bucket refills by itself, so rate-limit state needs no disk";

impl RateLimitConfig {
    /// The bucket every sender without an override gets.
    pub fn bucket(&self) -> TokenBucket {
        TokenBucket::new(self.signals_per_second, self.burst)
    }

    /// The default and every override.
    pub fn limits(&self) -> Limits {
        let mut limits = Limits::uniform(self.bucket());
        for o in &self.overrides {
            let bucket = TokenBucket::new(o.signals_per_second, o.burst);
            if let Some(sender) = &o.sender {
                limits.senders.insert(sender.clone(), bucket);
            }
            if let Some(namespace) = &o.namespace {
                limits.namespaces.insert(namespace.clone(), bucket);
            }
        }
        limits
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
        if self.max_signals_per_check == 0 {
            return Err("ratelimit.max_signals_per_check = 0 is not allowed: use at least 1".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, o) in self.overrides.iter().enumerate() {
            let key = format!("ratelimit.overrides[{i}]");
            let what = match (&o.sender, &o.namespace) {
                (Some(sender), None) if !sender.is_empty() && sender.len() <= crate::grpc::MAX_SENDER_LEN => {
                    format!("sender {sender:?}")
                }
                (None, Some(ns)) if breakwater_signal::is_dns1123_label(ns) => format!("namespace {ns:?}"),
                _ => {
                    return Err(format!(
                        "{key} is not allowed: give exactly one of sender (1 to 256 bytes) or namespace (a namespace name)"
                    ));
                }
            };
            if !seen.insert(what.clone()) {
                return Err(format!("{key} is not allowed: {what} has an override already"));
            }
            if !(o.signals_per_second.is_finite() && o.signals_per_second > 0.0) {
                return Err(format!(
                    "{key}.signals_per_second = {} is not allowed: use a positive number",
                    o.signals_per_second
                ));
            }
            if o.burst == 0 {
                return Err(format!("{key}.burst = 0 is not allowed: use at least 1"));
            }
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

    fn with(overrides: Vec<Override>) -> RateLimitConfig {
        RateLimitConfig { overrides, ..Default::default() }
    }

    fn by_sender(sender: &str, rate: f64, burst: u32) -> Override {
        Override { sender: Some(sender.into()), namespace: None, signals_per_second: rate, burst }
    }

    fn by_namespace(ns: &str, rate: f64, burst: u32) -> Override {
        Override { sender: None, namespace: Some(ns.into()), signals_per_second: rate, burst }
    }

    #[test]
    fn overrides_become_limits_by_sender_and_by_namespace() {
        let config = with(vec![by_sender("10.0.0.7", 100.0, 200), by_namespace("team-a", 5.0, 10)]);
        assert_eq!(config.validate(), Ok(()));
        let limits = config.limits();
        assert_eq!(limits.default, config.bucket());
        assert_eq!(limits.senders.get("10.0.0.7"), Some(&TokenBucket::new(100.0, 200)));
        assert_eq!(limits.namespaces.get("team-a"), Some(&TokenBucket::new(5.0, 10)));
    }

    #[test]
    fn a_bad_override_is_named() {
        let both = Override { namespace: Some("team-a".into()), ..by_sender("x", 1.0, 1) };
        assert!(with(vec![both]).validate().unwrap_err().contains("exactly one of sender"));
        let neither = Override { sender: None, ..by_sender("x", 1.0, 1) };
        assert!(with(vec![neither]).validate().unwrap_err().starts_with("ratelimit.overrides[0]"));
        assert!(with(vec![by_namespace("Team_A", 1.0, 1)]).validate().is_err());
        let twice = with(vec![by_sender("a", 1.0, 1), by_sender("a", 2.0, 2)]);
        assert!(twice.validate().unwrap_err().contains("has an override already"));
        assert_eq!(
            with(vec![by_sender("a", 1.0, 1), by_sender("b", 0.0, 1)]).validate(),
            Err("ratelimit.overrides[1].signals_per_second = 0 is not allowed: use a positive number".to_owned())
        );
        assert_eq!(
            with(vec![by_namespace("a", 1.0, 0)]).validate(),
            Err("ratelimit.overrides[0].burst = 0 is not allowed: use at least 1".to_owned())
        );
    }
}
