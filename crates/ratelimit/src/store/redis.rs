//! Redis rate-limit store: one Lua script per webhook over a small string
//! bucket `bw:rl:b:<sender>` = `"<tokens>|<updated_at>"`, whose TTL runs out
//! once the bucket would be full again, so idle senders vanish.

use std::sync::LazyLock;

use async_trait::async_trait;
use breakwater_keyspace::{Keyspace, KeyspaceError, Script, Ttl};
use breakwater_signal::UnixMillis;

use super::RateLimitStore;
use crate::limiter::{Decision, TokenBucket};

static CHECK: LazyLock<Script> = LazyLock::new(|| Script::new("ratelimit_check", include_str!("check.lua")));

#[derive(Debug, Clone)]
pub struct RedisRateLimitStore {
    keyspace: Keyspace,
    bucket: TokenBucket,
}

impl RedisRateLimitStore {
    pub fn new(keyspace: Keyspace, bucket: TokenBucket) -> Self {
        Self { keyspace, bucket }
    }

    pub fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    /// The key of a sender's bucket.
    pub fn bucket_key(&self, sender: &str) -> String {
        self.keyspace.key(&format!("b:{sender}"))
    }

    /// The arguments after the TTL. Rust's `Display` of an `f64` is the
    /// shortest text that parses back to the same double, so the script
    /// computes with exactly the rate `TokenBucket::decide` uses.
    fn args(&self, signals: u32, now: UnixMillis) -> [String; 4] {
        [now.to_string(), signals.to_string(), self.bucket.rate_per_ms().to_string(), self.bucket.burst().to_string()]
    }
}

#[async_trait]
impl RateLimitStore for RedisRateLimitStore {
    async fn check(&self, sender: &str, signals: u32, now: UnixMillis) -> Result<Decision, KeyspaceError> {
        let keys = [self.bucket_key(sender)];
        let ttl = Ttl::from_millis(self.bucket.max_ttl_ms());
        let reply: String = self.keyspace.run(&CHECK, &keys, ttl, &self.args(signals, now)).await?;
        parse_decision(&reply).ok_or_else(|| bad_reply(&CHECK, format!("reply {reply:?}")))
    }
}

fn bad_reply(script: &Script, what: String) -> KeyspaceError {
    KeyspaceError::Script {
        script: script.name(),
        source: redis::RedisError::from((redis::ErrorKind::Parse, "unexpected script reply", what)),
    }
}

/// Reads the script's `%.17g` numbers, which parse back to the exact doubles
/// the script computed; the retry-after converts like `TokenBucket::decide`'s.
fn parse_decision(reply: &str) -> Option<Decision> {
    let (tag, rest) = reply.split_once('|')?;
    match tag {
        "A" => Some(Decision { allowed: true, retry_after_ms: 0, tokens_left: rest.parse().ok()? }),
        "L" => {
            let (retry, tokens) = rest.split_once('|')?;
            let retry: f64 = retry.parse().ok()?;
            Some(Decision { allowed: false, retry_after_ms: retry as u64, tokens_left: tokens.parse().ok()? })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use breakwater_keyspace::RedisConfig;

    use super::*;

    // Building a keyspace needs a runtime (the pool's reaper); nothing connects.
    #[tokio::test]
    async fn bucket_key_is_prefixed_per_sender() {
        let keyspace =
            Keyspace::from_config(&RedisConfig { key_root: "t1".into(), ..Default::default() }, "rl").unwrap();
        let store = RedisRateLimitStore::new(keyspace, TokenBucket::new(1_000.0, 10));
        assert_eq!(store.bucket_key("10.1.2.3:4567"), "t1:rl:b:10.1.2.3:4567");
    }

    #[tokio::test]
    async fn args_carry_rate_and_burst_exactly() {
        let keyspace = Keyspace::from_config(&RedisConfig::default(), "rl").unwrap();
        let store = RedisRateLimitStore::new(keyspace, TokenBucket::new(0.1, 7));
        let args = store.args(3, 1_700_000_000_000);
        assert_eq!(args[..2], ["1700000000000".to_owned(), "3".to_owned()]);
        assert_eq!(args[2].parse::<f64>().unwrap(), 0.1 / 1_000.0);
        assert_eq!(args[3], "7");
    }

    #[test]
    fn parses_script_replies() {
        assert_eq!(parse_decision("A|-15"), Some(Decision { allowed: true, retry_after_ms: 0, tokens_left: -15.0 }));
        assert_eq!(
            parse_decision("L|1600|2.5000000000000004"),
            Some(Decision { allowed: false, retry_after_ms: 1_600, tokens_left: 2.5000000000000004 })
        );
        assert_eq!(parse_decision("L|1e+300|0").map(|d| d.retry_after_ms), Some(u64::MAX));
        assert_eq!(parse_decision("A|x"), None);
        assert_eq!(parse_decision("L|1"), None);
        assert_eq!(parse_decision("X|1"), None);
    }
}
