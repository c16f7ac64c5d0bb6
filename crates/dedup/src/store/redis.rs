//! Redis dedup store: one Lua script per batch over fixed-size string records
//! `bw:dedup:f:<fingerprint>` whose TTL is the window, and delivery markers
//! `bw:dedup:d:<delivery key>` whose TTL is the copy window.

use std::sync::LazyLock;

use async_trait::async_trait;
use breakwater_keyspace::{Keyspace, KeyspaceError, Script, Ttl};
use breakwater_signal::UnixMillis;

use super::{Bind, DedupStore, WindowRef};
use crate::window::{Decision, DedupWindow, DeliveryKey, Placement, Query, Record, Status, Verdict};

static CHECK: LazyLock<Script> = LazyLock::new(|| Script::new("dedup_check", include_str!("check.lua")));
static BIND: LazyLock<Script> = LazyLock::new(|| Script::new("dedup_bind", include_str!("bind.lua")));

#[derive(Debug, Clone)]
pub struct RedisDedupStore {
    keyspace: Keyspace,
    window: DedupWindow,
}

impl RedisDedupStore {
    pub fn new(keyspace: Keyspace, window: DedupWindow) -> Self {
        Self { keyspace, window }
    }

    pub fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    /// The key of a fingerprint's record.
    pub fn record_key(&self, fingerprint: &str) -> String {
        self.keyspace.key(&format!("f:{fingerprint}"))
    }

    /// The key remembering one delivery.
    pub fn delivery_key(&self, delivery: DeliveryKey) -> String {
        self.keyspace.key(&format!("d:{}", delivery.hex()))
    }

    fn ttl(&self) -> Ttl {
        Ttl::from_millis(u64::try_from(self.window.window_ms()).unwrap_or(u64::MAX))
    }
}

#[async_trait]
impl DedupStore for RedisDedupStore {
    async fn check(&self, queries: &[Query], now: UnixMillis) -> Result<Vec<Verdict>, KeyspaceError> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys: Vec<String> = queries.iter().map(|q| self.record_key(&q.fingerprint)).collect();
        let mut args =
            vec![now.to_string(), self.window.window_ms().to_string(), self.window.copy_window_ms().to_string()];
        for q in queries {
            let status = if q.status == Status::Firing { "f" } else { "r" };
            match q.delivery {
                Some(delivery) => {
                    keys.push(self.delivery_key(delivery));
                    // Lua indexes KEYS from 1.
                    args.push(format!("{status}:{}", keys.len()));
                }
                None => args.push(status.to_owned()),
            }
        }
        let replies: Vec<String> = self.keyspace.run(&CHECK, &keys, self.ttl(), &args).await?;
        if replies.len() != queries.len() {
            return Err(bad_reply(&CHECK, format!("{} replies for {} queries", replies.len(), queries.len())));
        }
        replies.iter().map(|r| parse_verdict(r).ok_or_else(|| bad_reply(&CHECK, format!("reply {r:?}")))).collect()
    }

    async fn bind(&self, binds: &[Bind], now: UnixMillis) -> Result<u32, KeyspaceError> {
        if binds.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = binds.iter().map(|b| self.record_key(&b.fingerprint)).collect();
        let mut args = vec![now.to_string(), self.window.window_ms().to_string()];
        for b in binds {
            args.push(b.first_seen.to_string());
            args.push(b.to.encode());
        }
        self.keyspace.run(&BIND, &keys, self.ttl(), &args).await
    }

    async fn placements(
        &self,
        windows: &[WindowRef],
        now: UnixMillis,
    ) -> Result<Vec<Option<Placement>>, KeyspaceError> {
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = redis::cmd("MGET");
        for w in windows {
            mget.arg(self.record_key(&w.fingerprint));
        }
        let records: Vec<Option<String>> = self.keyspace.query(&mget).await?;
        Ok(windows
            .iter()
            .zip(records)
            .map(|(w, record)| {
                record
                    .as_deref()
                    .and_then(Record::decode)
                    .filter(|r| r.first_seen == w.first_seen && self.window.is_open(r, now))
                    .map(|r| r.placement)
            })
            .collect())
    }
}

fn bad_reply(script: &Script, what: String) -> KeyspaceError {
    KeyspaceError::Script {
        script: script.name(),
        source: redis::RedisError::from((redis::ErrorKind::Parse, "unexpected script reply", what)),
    }
}

fn parse_verdict(reply: &str) -> Option<Verdict> {
    match reply {
        "U" => return Some(Verdict { decision: Decision::ResolvedUnknown, record: None }),
        "C" => return Some(Verdict { decision: Decision::Copy, record: None }),
        _ => {}
    }
    let (tag, record) = reply.split_once('|')?;
    let decision = match tag {
        "N" => Decision::New,
        "D" => Decision::Duplicate,
        "R" => Decision::Resolved,
        "C" => Decision::Copy,
        _ => return None,
    };
    Some(Verdict { decision, record: Some(Record::decode(record)?) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Binding;

    #[test]
    fn parses_script_replies() {
        assert_eq!(parse_verdict("U"), Some(Verdict { decision: Decision::ResolvedUnknown, record: None }));
        let v = parse_verdict("D|10|20|3|prod/storm-a").unwrap();
        assert_eq!(v.decision, Decision::Duplicate);
        assert_eq!(
            v.record,
            Some(Record {
                first_seen: 10,
                last_seen: 20,
                count: 3,
                placement: Placement::Bound(Binding { namespace: "prod".into(), name: "storm-a".into() })
            })
        );
        assert_eq!(parse_verdict("N|1|1|1|?").and_then(|v| v.record).map(|r| r.placement), Some(Placement::Pending));
        assert_eq!(parse_verdict("D|1|1|2|").and_then(|v| v.record).map(|r| r.placement), Some(Placement::Own));
        assert_eq!(parse_verdict("C"), Some(Verdict { decision: Decision::Copy, record: None }));
        assert_eq!(parse_verdict("C|1|5|2|").map(|v| v.decision), Some(Decision::Copy));
        assert_eq!(parse_verdict("X|1|1|1|"), None);
        assert_eq!(parse_verdict("N|a|1|1|"), None);
    }
}
