//! Storm store of `breakwater up`: [`MemoryStormStore`] decides, and every
//! change is journaled to the `storm` namespace of the embedded store before
//! the call answers, in decision order; opening restores the live state.
//!
//! Entries, each expiring when the in-memory state it mirrors is no longer used:
//! - `w<ns><alertname>` (length-prefixed) → the window (41 bytes), until it
//!   closes: `min(last + inactivity, start + max_window)`;
//! - `r<ns><alertname><start><resource>` → empty, one per listed resource,
//!   until its window's latest close, `start + max_window`. Keyed by the
//!   window's start, so a window that starts over needs no deletes: entries of
//!   an older start are ignored at restore and expire;
//! - `c<storm CR name>` → the alert counter and its expiry (16 bytes), until
//!   that expiry.

use std::collections::HashMap;

use async_trait::async_trait;
use breakwater_embedded::{EmbeddedError, EmbeddedStore, Namespace, Op};
use breakwater_keyspace::KeyspaceError;
use breakwater_signal::UnixMillis;

use super::memory::Changes;
use super::{MemoryStormStore, StormCount, StormQuery, StormStore};
use crate::detector::{StormRules, StormType, Verdict, Window};

/// The namespace of the storm service in a state directory.
pub const NAMESPACE: &str = "storm";

#[derive(Debug)]
pub struct EmbeddedStormStore {
    memory: MemoryStormStore,
    journal: Namespace,
    rules: StormRules,
}

impl EmbeddedStormStore {
    /// Opens the `storm` namespace of `store` and restores the windows and
    /// counters still live now.
    ///
    /// # Errors
    /// When the namespace cannot be opened or read.
    pub fn open(store: &EmbeddedStore, rules: StormRules) -> Result<Self, EmbeddedError> {
        let journal = store.namespace(NAMESPACE)?;
        let memory = MemoryStormStore::new(rules);
        let mut windows: HashMap<(String, String), (Window, Vec<String>)> = HashMap::new();
        let mut resources = Vec::new();
        let mut counters = Vec::new();
        let mut deliveries = Vec::new();
        for (key, value) in journal.load_live(store.now())? {
            // An entry this version cannot read is skipped, not fatal: it expires by itself.
            match decode_entry(&key, &value) {
                Some(Entry::Window(k, window)) => {
                    windows.insert(k, (window, Vec::new()));
                }
                Some(Entry::Resource(k, start, resource)) => resources.push((k, start, resource)),
                Some(Entry::Counter(name, alerts)) => counters.push((name, alerts)),
                Some(Entry::Delivery(delivery, until)) => deliveries.push((delivery, until)),
                None => tracing::warn!(namespace = NAMESPACE, "skipping an unreadable storm entry"),
            }
        }
        for (k, start, resource) in resources {
            if let Some((window, list)) = windows.get_mut(&k)
                && window.start == start
            {
                list.push(resource);
            }
        }
        memory.restore(windows, counters, deliveries);
        Ok(Self { memory, journal, rules })
    }

    fn write(&self, changes: &Changes) -> Result<(), KeyspaceError> {
        let r = &self.rules;
        let mut ops = Vec::with_capacity(changes.windows.len() + changes.resources.len() + changes.counters.len());
        for ((ns, alert), window) in &changes.windows {
            let closes = window.last.saturating_add(r.inactivity_ms).min(window.start.saturating_add(r.max_window_ms));
            ops.push(Op::Put { key: window_key(ns, alert), value: encode_window(window), expires_at: closes });
        }
        for ((ns, alert), start, resource) in &changes.resources {
            ops.push(Op::Put {
                key: resource_key(ns, alert, *start, resource),
                value: Vec::new(),
                expires_at: start.saturating_add(r.max_window_ms),
            });
        }
        for (name, alerts, expires) in &changes.counters {
            let mut value = alerts.to_be_bytes().to_vec();
            value.extend_from_slice(&expires.to_be_bytes());
            ops.push(Op::Put { key: counter_key(name), value, expires_at: *expires });
        }
        for (delivery, until) in &changes.deliveries {
            let mut key = vec![b'd'];
            key.extend_from_slice(&delivery.to_be_bytes());
            ops.push(Op::Put { key, value: until.to_be_bytes().to_vec(), expires_at: *until });
        }
        // The trait speaks KeyspaceError; "unavailable" is what the storm face degrades on.
        self.journal.apply(&ops).map_err(|e| KeyspaceError::Unavailable(Box::new(e)))
    }
}

#[async_trait]
impl StormStore for EmbeddedStormStore {
    async fn detect(&self, queries: &[StormQuery], now: UnixMillis) -> Result<Vec<Verdict>, KeyspaceError> {
        self.memory.detect_journaled(queries, now, Some(&|changes: &Changes| self.write(changes)))
    }

    async fn count(&self, storms: &[StormCount], now: UnixMillis) -> Result<Vec<u64>, KeyspaceError> {
        self.memory.count_journaled(storms, now, Some(&|changes: &Changes| self.write(changes)))
    }
}

enum Entry {
    Window((String, String), Window),
    Resource((String, String), UnixMillis, String),
    /// (name, (alerts, expiry)).
    Counter(String, (u64, UnixMillis)),
    /// (delivery, until when it is remembered).
    Delivery(u128, UnixMillis),
}

fn push_str(key: &mut Vec<u8>, s: &str) {
    // Length-prefixed: namespaces and alertnames may contain any character.
    key.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    key.extend_from_slice(s.as_bytes());
}

fn window_key(ns: &str, alert: &str) -> Vec<u8> {
    let mut key = vec![b'w'];
    push_str(&mut key, ns);
    push_str(&mut key, alert);
    key
}

fn resource_key(ns: &str, alert: &str, start: UnixMillis, resource: &str) -> Vec<u8> {
    let mut key = vec![b'r'];
    push_str(&mut key, ns);
    push_str(&mut key, alert);
    key.extend_from_slice(&start.to_be_bytes());
    key.extend_from_slice(resource.as_bytes());
    key
}

fn counter_key(name: &str) -> Vec<u8> {
    let mut key = vec![b'c'];
    key.extend_from_slice(name.as_bytes());
    key
}

fn encode_window(w: &Window) -> Vec<u8> {
    let mut v = Vec::with_capacity(41);
    v.extend_from_slice(&w.start.to_be_bytes());
    v.extend_from_slice(&w.last.to_be_bytes());
    v.extend_from_slice(&w.alerts.to_be_bytes());
    v.extend_from_slice(&w.distinct.to_be_bytes());
    v.extend_from_slice(&w.omitted.to_be_bytes());
    v.push(match w.storm {
        None => 0,
        Some(StormType::Rate) => 1,
        Some(StormType::Pattern) => 2,
    });
    v
}

/// A cursor over an entry's bytes; every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().ok()?);
        let bytes = self.take(usize::try_from(len).ok()?)?;
        String::from_utf8(bytes.to_vec()).ok()
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

fn decode_entry(key: &[u8], value: &[u8]) -> Option<Entry> {
    let (&kind, rest) = key.split_first()?;
    let mut k = Reader(rest);
    match kind {
        b'w' => {
            let window_key = (k.string()?, k.string()?);
            let mut v = Reader(value);
            let window = Window {
                start: v.i64()?,
                last: v.i64()?,
                alerts: v.u64()?,
                distinct: v.u64()?,
                omitted: v.u64()?,
                storm: match v.take(1)? {
                    [0] => None,
                    [1] => Some(StormType::Rate),
                    [2] => Some(StormType::Pattern),
                    _ => return None,
                },
            };
            (k.rest().is_empty() && v.rest().is_empty()).then_some(Entry::Window(window_key, window))
        }
        b'r' => {
            let window_key = (k.string()?, k.string()?);
            let start = k.i64()?;
            let resource = String::from_utf8(k.rest().to_vec()).ok()?;
            Some(Entry::Resource(window_key, start, resource))
        }
        b'd' => {
            let delivery = u128::from_be_bytes(k.take(16)?.try_into().ok()?);
            let mut v = Reader(value);
            let until = v.i64()?;
            (k.rest().is_empty() && v.rest().is_empty()).then_some(Entry::Delivery(delivery, until))
        }
        b'c' => {
            let name = String::from_utf8(k.rest().to_vec()).ok()?;
            let mut v = Reader(value);
            let counter = (v.u64()?, v.i64()?);
            v.rest().is_empty().then_some(Entry::Counter(name, counter))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let window =
            Window { start: 10, last: 20, alerts: 7, distinct: 6, omitted: 1, storm: Some(StormType::Pattern) };
        let Some(Entry::Window(k, w)) = decode_entry(&window_key("prod", "Pod|Crash"), &encode_window(&window)) else {
            panic!("window did not decode");
        };
        assert_eq!((k, w), (("prod".to_owned(), "Pod|Crash".to_owned()), window.clone()));
        let Some(Entry::Resource(k, start, r)) = decode_entry(&resource_key("a", "", 5, "a:Pod:x"), &[]) else {
            panic!("resource did not decode");
        };
        assert_eq!((k, start, r.as_str()), (("a".to_owned(), String::new()), 5, "a:Pod:x"));
        let counter = [9u64.to_be_bytes(), 77i64.to_be_bytes()].concat();
        let Some(Entry::Counter(name, n)) = decode_entry(&counter_key("storm-x-1"), &counter) else {
            panic!("counter did not decode");
        };
        assert_eq!((name.as_str(), n), ("storm-x-1", (9, 77)));
        // Damaged entries are refused, not misread.
        assert!(decode_entry(&window_key("p", "A"), &encode_window(&window)[..40]).is_none());
        assert!(decode_entry(b"w\0\0\0\x09ab", &encode_window(&window)).is_none());
        assert!(decode_entry(b"x", &[]).is_none());
        assert!(decode_entry(&counter_key("s"), &[1, 2]).is_none());
    }
}
