//! Redis rate-limit store: one Lua script per webhook over small string
//! buckets `bw:rl:b:<sender>` (and `bw:rl:n:<namespace>` for a namespace with
//! an override) = `"<tokens>|<updated_at>"`, whose TTL runs out once the bucket
//! would be full again, so idle senders vanish.

use std::sync::LazyLock;

use async_trait::async_trait;
use breakwater_keyspace::{Keyspace, KeyspaceError, Script, Ttl};
use breakwater_signal::UnixMillis;

use super::RateLimitStore;
use crate::limiter::{Charge, Decision, Quota, summarize};

static CHECK: LazyLock<Script> = LazyLock::new(|| Script::new("ratelimit_check", include_str!("check.lua")));

#[derive(Debug, Clone)]
pub struct RedisRateLimitStore {
    keyspace: Keyspace,
}

impl RedisRateLimitStore {
    pub fn new(keyspace: Keyspace) -> Self {
        Self { keyspace }
    }

    pub fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    /// The key of a bucket (`b:<sender>`, `n:<namespace>`).
    pub fn bucket_key(&self, key: &str) -> String {
        self.keyspace.key(key)
    }

    /// The arguments after the TTL. Rust's `Display` of an `f64` is the
    /// shortest text that parses back to the same double, so the script
    /// computes with exactly the rates `decide_all` uses.
    fn args(charges: &[Charge], now: UnixMillis) -> Vec<String> {
        let mut args = vec![now.to_string()];
        for c in charges {
            args.extend([c.signals.to_string(), c.bucket.rate_per_ms().to_string(), c.bucket.burst().to_string()]);
        }
        args
    }
}

#[async_trait]
impl RateLimitStore for RedisRateLimitStore {
    async fn check(&self, charges: &[Charge], now: UnixMillis) -> Result<(Decision, Quota), KeyspaceError> {
        let keys: Vec<String> = charges.iter().map(|c| self.bucket_key(&c.key)).collect();
        let cap = charges.iter().map(|c| c.bucket.max_ttl_ms()).max().unwrap_or(1);
        let reply: String = self.keyspace.run(&CHECK, &keys, Ttl::from_millis(cap), &Self::args(charges, now)).await?;
        let (allowed, tokens) =
            parse_reply(&reply, charges.len()).ok_or_else(|| bad_reply(&CHECK, format!("reply {reply:?}")))?;
        Ok(summarize(charges, allowed, &tokens))
    }
}

fn bad_reply(script: &Script, what: String) -> KeyspaceError {
    KeyspaceError::Script {
        script: script.name(),
        source: redis::RedisError::from((redis::ErrorKind::Parse, "unexpected script reply", what)),
    }
}

/// Reads the script's verdict and its `%.17g` numbers, which parse back to
/// the exact doubles the script computed: one per bucket, `buckets` of them.
fn parse_reply(reply: &str, buckets: usize) -> Option<(bool, Vec<f64>)> {
    let mut parts = reply.split('|');
    let allowed = match parts.next()? {
        "A" => true,
        "L" => false,
        _ => return None,
    };
    let tokens: Vec<f64> = parts.map(|t| t.parse().ok()).collect::<Option<_>>()?;
    (tokens.len() == buckets).then_some((allowed, tokens))
}

#[cfg(test)]
mod tests {
    use breakwater_keyspace::RedisConfig;

    use super::*;
    use crate::limiter::TokenBucket;

    // Building a keyspace needs a runtime (the pool's reaper); nothing connects.
    #[tokio::test]
    async fn bucket_key_is_prefixed_per_sender() {
        let keyspace =
            Keyspace::from_config(&RedisConfig { key_root: "t1".into(), ..Default::default() }, "rl").unwrap();
        let store = RedisRateLimitStore::new(keyspace);
        assert_eq!(store.bucket_key("b:10.1.2.3:4567"), "t1:rl:b:10.1.2.3:4567");
        assert_eq!(store.bucket_key("n:team-a"), "t1:rl:n:team-a");
    }

    #[test]
    fn args_carry_rate_and_burst_exactly() {
        let charges = [
            Charge { key: "b:a".into(), bucket: TokenBucket::new(0.1, 7), signals: 3 },
            Charge { key: "n:x".into(), bucket: TokenBucket::new(5.0, 9), signals: 2 },
        ];
        let args = RedisRateLimitStore::args(&charges, 1_700_000_000_000);
        assert_eq!(args[..2], ["1700000000000".to_owned(), "3".to_owned()]);
        assert_eq!(args[2].parse::<f64>().unwrap(), 0.1 / 1_000.0);
        assert_eq!(args[3..], ["7".to_owned(), "2".to_owned(), "0.005".to_owned(), "9".to_owned()]);
    }

    #[test]
    fn parses_script_replies() {
        assert_eq!(parse_reply("A|-15", 1), Some((true, vec![-15.0])));
        assert_eq!(parse_reply("L|2.5000000000000004|0", 2), Some((false, vec![2.5000000000000004, 0.0])));
        assert_eq!(parse_reply("A|x", 1), None);
        assert_eq!(parse_reply("L|1", 2), None, "one number per bucket");
        assert_eq!(parse_reply("X|1", 1), None);
    }
}
