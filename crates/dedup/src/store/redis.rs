//! Redis dedup store: one Lua script per batch. An open incident is a field of a
//! small hash, `bw:dedup:r:<window>:<epoch>:<shard>`, about 50 bytes in Redis
//! where a key of its own cost over 200: see `check.lua` for the layout. Storm
//! placements are named once per epoch in `bw:dedup:b:<window>:<epoch>`, and
//! remembered deliveries are fields of `bw:dedup:d:<copy window>:<epoch>:<shard>`.

use std::sync::LazyLock;

use async_trait::async_trait;
use breakwater_keyspace::{Keyspace, KeyspaceError, Script, Ttl};
use breakwater_signal::{UnixMillis, fingerprint_of};

use super::{Bind, DedupStore, WindowEnd, WindowRef};
use crate::window::{Decision, DedupWindow, Placement, Query, Record, Status, Verdict};

static CHECK: LazyLock<Script> = LazyLock::new(|| Script::new("dedup_check", include_str!("check.lua")));
static BIND: LazyLock<Script> = LazyLock::new(|| Script::new("dedup_bind", include_str!("bind.lua")));
static PLACEMENTS: LazyLock<Script> = LazyLock::new(|| Script::new("dedup_placements", include_str!("placements.lua")));

/// Hex characters of a fingerprint that choose its hash: 4,096 hashes per epoch, so a
/// hash stays within Redis's compact encoding (`hash-max-listpack-entries`, 128 by
/// default) up to about 500,000 incidents opened or seen per window.
const SHARD_CHARS: usize = 3;
/// Hex characters of a fingerprint after the shard's that name its field: with the
/// shard, 108 bits of the fingerprint (a SHA-256), so two incidents share a record
/// with odds of about one in 10^20 among a million.
const FIELD_CHARS: usize = 24;

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

    /// The hash holding a fingerprint's record when its last alert was seen in `epoch`,
    /// and the record's field in it.
    pub fn record_slot(&self, fingerprint: &str, epoch: i64) -> (String, String) {
        let (shard, field) = fingerprint_place(fingerprint);
        (self.hash_key("r", self.window.window_ms(), epoch, &shard), field)
    }

    /// `<prefix><kind>:<window ms>:<epoch>:<shard>`: the hash of records (`r`) or
    /// deliveries (`d`) of `shard` in `epoch` of a window of `window_ms`.
    fn hash_key(&self, kind: &str, window_ms: i64, epoch: i64, shard: &str) -> String {
        self.keyspace.key(&format!("{kind}:{window_ms}:{epoch}:{shard}"))
    }

    /// The hashes of `shard` in the epochs before, of and after `epoch`, in the order the
    /// scripts take them.
    fn hashes_around(&self, kind: &str, window_ms: i64, epoch: i64, shard: &str) -> [String; 3] {
        [-1, 0, 1].map(|d| self.hash_key(kind, window_ms, epoch + d, shard))
    }

    /// The epoch of `now`: a record is in this one, the one before or the one after.
    fn epoch(&self, now: UnixMillis) -> i64 {
        now.div_euclid(self.window.window_ms().max(1))
    }

    /// The copy window's epoch of `now`, for deliveries.
    fn copy_epoch(&self, now: UnixMillis) -> i64 {
        now.div_euclid(self.window.copy_window_ms().max(1))
    }

    /// The binding tables of the epochs around `epoch`, then the record hashes of each
    /// fingerprint there (as the scripts take them), and each fingerprint's field.
    fn slots<'f>(&self, fingerprints: impl Iterator<Item = &'f str>, epoch: i64) -> (Vec<String>, Vec<String>) {
        let window = self.window.window_ms();
        let mut keys: Vec<String> = (-1..=1).map(|d| self.keyspace.key(&format!("b:{window}:{}", epoch + d))).collect();
        let mut fields = Vec::new();
        for fingerprint in fingerprints {
            let (shard, field) = fingerprint_place(fingerprint);
            keys.extend(self.hashes_around("r", window, epoch, &shard));
            fields.push(field);
        }
        (keys, fields)
    }

    /// Runs `bind.lua` over `(fingerprint, first_seen, what to set)` per window.
    async fn run_bind(
        &self,
        windows: impl Iterator<Item = (&str, UnixMillis, String)>,
        now: UnixMillis,
    ) -> Result<u32, KeyspaceError> {
        let windows: Vec<_> = windows.collect();
        if windows.is_empty() {
            return Ok(0);
        }
        let epoch = self.epoch(now);
        let (keys, fields) = self.slots(windows.iter().map(|&(fingerprint, ..)| fingerprint), epoch);
        let mut args = vec![now.to_string(), self.window.window_ms().to_string(), epoch.to_string()];
        for ((_, first_seen, to), field) in windows.into_iter().zip(fields) {
            args.extend([field, first_seen.to_string(), to]);
        }
        self.keyspace.run(&BIND, &keys, self.ttl(), &args).await
    }

    fn ttl(&self) -> Ttl {
        Ttl::from_millis(u64::try_from(self.window.window_ms()).unwrap_or(u64::MAX))
    }
}

/// The shard of a fingerprint's hash and its field there (see [`SHARD_CHARS`] and
/// [`FIELD_CHARS`]). A fingerprint the edge makes is hex already; other text (from a
/// caller of the store's own API) is hashed first.
fn fingerprint_place(fingerprint: &str) -> (String, String) {
    let hashed;
    let hex = if fingerprint.len() >= SHARD_CHARS + FIELD_CHARS && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
        fingerprint
    } else {
        hashed = fingerprint_of(&[fingerprint]);
        &hashed
    };
    (hex[..SHARD_CHARS].to_owned(), hex[SHARD_CHARS..SHARD_CHARS + FIELD_CHARS].to_owned())
}

/// A storm CR's placement as `bind.lua` takes it: a short id of the CR, which records
/// carry, and the CR it names, kept once per epoch.
fn encode_binding(placement: &Placement) -> String {
    match placement {
        Placement::Bound(b) => {
            let name = format!("{}/{}", b.namespace, b.name);
            format!("#{}|{name}", &fingerprint_of(&[&name])[..16])
        }
        Placement::Own | Placement::Pending => String::new(),
    }
}

#[async_trait]
impl DedupStore for RedisDedupStore {
    async fn check(&self, queries: &[Query], now: UnixMillis) -> Result<Vec<Verdict>, KeyspaceError> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let (epoch, copy_epoch) = (self.epoch(now), self.copy_epoch(now));
        let (mut keys, fields) = self.slots(queries.iter().map(|q| q.fingerprint.as_str()), epoch);
        let mut args = vec![
            now.to_string(),
            self.window.window_ms().to_string(),
            self.window.copy_window_ms().to_string(),
            epoch.to_string(),
            copy_epoch.to_string(),
        ];
        for (q, field) in queries.iter().zip(fields) {
            let status = if q.status == Status::Firing { "f" } else { "r" };
            match q.delivery {
                Some(delivery) => {
                    // Lua indexes KEYS from 1. A delivery's field is all of it after the
                    // shard: it is a hash already, and a caller may send any 128 bits.
                    let first = keys.len() + 1;
                    let hex = delivery.hex();
                    let (shard, delivery_field) = hex.split_at(SHARD_CHARS);
                    keys.extend(self.hashes_around("d", self.window.copy_window_ms(), copy_epoch, shard));
                    args.push(format!("{status}{field}:{first}:{delivery_field}"));
                }
                None => args.push(format!("{status}{field}")),
            }
        }
        let replies: Vec<String> = self.keyspace.run(&CHECK, &keys, self.ttl(), &args).await?;
        if replies.len() != queries.len() {
            return Err(bad_reply(&CHECK, format!("{} replies for {} queries", replies.len(), queries.len())));
        }
        replies.iter().map(|r| parse_verdict(r).ok_or_else(|| bad_reply(&CHECK, format!("reply {r:?}")))).collect()
    }

    async fn bind(&self, binds: &[Bind], now: UnixMillis) -> Result<u32, KeyspaceError> {
        self.run_bind(binds.iter().map(|b| (b.fingerprint.as_str(), b.first_seen, encode_binding(&b.to))), now).await
    }

    async fn end(&self, ends: &[WindowEnd], now: UnixMillis) -> Result<u32, KeyspaceError> {
        // bind.lua's form of an end.
        self.run_bind(ends.iter().map(|e| (e.fingerprint.as_str(), e.first_seen, format!("!{}", e.ends_at))), now).await
    }

    async fn placements(
        &self,
        windows: &[WindowRef],
        now: UnixMillis,
    ) -> Result<Vec<Option<Placement>>, KeyspaceError> {
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        let (keys, fields) = self.slots(windows.iter().map(|w| w.fingerprint.as_str()), self.epoch(now));
        let records: Vec<String> = self.keyspace.run(&PLACEMENTS, &keys, self.ttl(), &fields).await?;
        if records.len() != windows.len() {
            return Err(bad_reply(&PLACEMENTS, format!("{} replies for {} windows", records.len(), windows.len())));
        }
        Ok(windows
            .iter()
            .zip(records)
            .map(|(w, record)| {
                Record::decode(&record)
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
                placement: Placement::Bound(Binding { namespace: "prod".into(), name: "storm-a".into() }),
                ends_at: None,
            })
        );
        assert_eq!(parse_verdict("D|1|1|2||7000").and_then(|v| v.record).and_then(|r| r.ends_at), Some(7_000));
        assert_eq!(parse_verdict("N|1|1|1|?").and_then(|v| v.record).map(|r| r.placement), Some(Placement::Pending));
        assert_eq!(parse_verdict("D|1|1|2|").and_then(|v| v.record).map(|r| r.placement), Some(Placement::Own));
        assert_eq!(parse_verdict("C"), Some(Verdict { decision: Decision::Copy, record: None }));
        assert_eq!(parse_verdict("C|1|5|2|").map(|v| v.decision), Some(Decision::Copy));
        assert_eq!(parse_verdict("X|1|1|1|"), None);
        assert_eq!(parse_verdict("N|a|1|1|"), None);
    }
}
