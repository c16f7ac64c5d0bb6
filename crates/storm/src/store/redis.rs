//! Redis storm store: per (namespace, alertname) a constant-size window record
//! `w:<id>` and a capped resource set `r:<id>`, where `<id>` is 16 hex of the
//! hash of namespace and alertname; both expire with the inactivity timeout.
//! Each storm's alert counter `c:<id>:<window start>` lives `count_ttl` after
//! its last increment.

use std::sync::LazyLock;

use async_trait::async_trait;
use breakwater_keyspace::{Keyspace, KeyspaceError, Script, Ttl};
use breakwater_signal::{UnixMillis, fingerprint_of, parse_storm_cr_name};

use super::{StormCount, StormQuery, StormStore};
use crate::detector::{Outcome, StormRules, StormType, Verdict};

static DETECT: LazyLock<Script> = LazyLock::new(|| Script::new("storm_detect", include_str!("detect.lua")));
static COUNT: LazyLock<Script> = LazyLock::new(|| Script::new("storm_count", include_str!("count.lua")));

#[derive(Debug, Clone)]
pub struct RedisStormStore {
    keyspace: Keyspace,
    rules: StormRules,
}

impl RedisStormStore {
    pub fn new(keyspace: Keyspace, rules: StormRules) -> Self {
        Self { keyspace, rules }
    }

    /// The window record key, resource set key and counter prefix of (namespace, alertname).
    pub fn keys(&self, namespace: &str, alert_name: &str) -> [String; 3] {
        let id = &fingerprint_of(&[namespace, alert_name])[..16];
        ["w", "r", "c"].map(|kind| self.keyspace.key(&format!("{kind}:{id}")))
    }

    /// The key remembering one counted delivery.
    fn delivery_key(&self, delivery: u128) -> String {
        self.keyspace.key(&format!("d:{delivery:032x}"))
    }

    fn count_ttl(&self) -> Ttl {
        Ttl::from_millis(u64::try_from(self.rules.count_ttl_ms).unwrap_or(u64::MAX))
    }
}

#[async_trait]
impl StormStore for RedisStormStore {
    async fn detect(&self, queries: &[StormQuery], now: UnixMillis) -> Result<Vec<Verdict>, KeyspaceError> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys: Vec<String> = queries.iter().flat_map(|q| self.keys(&q.namespace, &q.alert_name)).collect();
        let r = &self.rules;
        let mut args = vec![
            now.to_string(),
            r.rate_threshold.to_string(),
            r.pattern_threshold.to_string(),
            r.inactivity_ms.to_string(),
            r.max_window_ms.to_string(),
            r.list_cap.to_string(),
            r.copy_window_ms.to_string(),
            queries.len().to_string(),
        ];
        args.extend(queries.iter().map(|q| q.resource_id.clone()));
        for q in queries {
            match q.delivery {
                Some(delivery) => {
                    keys.push(self.delivery_key(delivery));
                    // Lua indexes KEYS from 1.
                    args.push(keys.len().to_string());
                }
                None => args.push("0".to_owned()),
            }
        }
        let replies: Vec<String> = self.keyspace.run(&DETECT, &keys, self.count_ttl(), &args).await?;
        if replies.len() != queries.len() {
            return Err(bad_reply(format!("{} replies for {} queries", replies.len(), queries.len())));
        }
        replies.iter().map(|reply| parse_verdict(reply).ok_or_else(|| bad_reply(format!("reply {reply:?}")))).collect()
    }

    async fn count(&self, storms: &[StormCount], now: UnixMillis) -> Result<Vec<u64>, KeyspaceError> {
        if storms.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::with_capacity(storms.len() * 2);
        for s in storms {
            let (id, start) =
                parse_storm_cr_name(&s.name).ok_or_else(|| bad_reply(format!("storm name {:?}", s.name)))?;
            keys.push(self.keyspace.key(&format!("c:{id}:{start}")));
        }
        let mut args = vec![now.to_string(), self.rules.copy_window_ms.to_string()];
        for s in storms {
            match s.delivery {
                Some(delivery) => {
                    keys.push(self.delivery_key(delivery));
                    // Lua indexes KEYS from 1.
                    args.push(format!("{}:{}", s.alerts, keys.len()));
                }
                None => args.push(s.alerts.to_string()),
            }
        }
        let totals: Vec<u64> = self.keyspace.run(&COUNT, &keys, self.count_ttl(), &args).await?;
        if totals.len() == storms.len() {
            Ok(totals)
        } else {
            Err(bad_reply(format!("{} totals for {} storms", totals.len(), storms.len())))
        }
    }
}

fn bad_reply(what: String) -> KeyspaceError {
    KeyspaceError::Script {
        script: DETECT.name(),
        source: redis::RedisError::from((redis::ErrorKind::Parse, "unexpected script reply", what)),
    }
}

fn parse_verdict(reply: &str) -> Option<Verdict> {
    let f: Vec<&str> = reply.split('|').collect();
    let [outcome, storm, start, storm_alerts, listed, omitted] = f.as_slice() else { return None };
    Some(Verdict {
        outcome: match *outcome {
            "N" => Outcome::None,
            "O" => Outcome::Opened,
            "J" => Outcome::Joined,
            _ => return None,
        },
        storm: match *storm {
            "0" => None,
            "1" => Some(StormType::Rate),
            "2" => Some(StormType::Pattern),
            _ => return None,
        },
        window_start: start.parse().ok()?,
        storm_alerts: storm_alerts.parse().ok()?,
        resource_listed: *listed == "1",
        omitted: omitted.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_script_replies() {
        let v = parse_verdict("O|2|1000|1|1|0").unwrap();
        assert_eq!(
            v,
            Verdict {
                outcome: Outcome::Opened,
                storm: Some(StormType::Pattern),
                window_start: 1000,
                storm_alerts: 1,
                resource_listed: true,
                omitted: 0
            }
        );
        assert_eq!(
            parse_verdict("N|0|5|0|0|3").map(|v| (v.outcome, v.storm, v.omitted)),
            Some((Outcome::None, None, 3))
        );
        assert_eq!(parse_verdict("X|0|5|0|0|3"), None);
        assert_eq!(parse_verdict("N|0|5|0|0"), None);
    }
}
