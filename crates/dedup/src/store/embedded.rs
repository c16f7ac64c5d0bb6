//! Dedup store of `breakwater up`: [`MemoryDedupStore`] decides, and every
//! record a call changed is journaled to the `dedup` namespace of the embedded
//! store before the call answers; opening restores the open incidents.
//!
//! Entries:
//! - `f<fingerprint>` → `first|last|count|placement[|ends_at]` (placement `?`
//!   pending, empty for its own CR, or `namespace/name`) per open incident,
//!   expiring when its window closes, `last + window`;
//! - `d<delivery key, 32 hex>` → until when a copy of that delivery is
//!   recognised, expiring then.

use std::future::Future;

use async_trait::async_trait;
use breakwater_embedded::{EmbeddedError, EmbeddedStore, Namespace, Op};
use breakwater_keyspace::KeyspaceError;
use breakwater_signal::UnixMillis;

use super::{Bind, DedupStore, MemoryDedupStore, WindowEnd, WindowRef};
use crate::window::{Decision, DedupWindow, DeliveryKey, Placement, Query, Record, Verdict};

/// The namespace of the dedup service in a state directory.
pub const NAMESPACE: &str = "dedup";

#[derive(Debug)]
pub struct EmbeddedDedupStore {
    memory: MemoryDedupStore,
    journal: Namespace,
    window: DedupWindow,
    /// Held across the memory change and its journal write, so the journal's
    /// order is the order of decisions, and a failed write can be undone.
    order: tokio::sync::Mutex<()>,
}

impl EmbeddedDedupStore {
    /// Opens the `dedup` namespace of `store` and restores the incidents
    /// still open now.
    ///
    /// # Errors
    /// When the namespace cannot be opened or read.
    pub fn open(store: &EmbeddedStore, window: DedupWindow) -> Result<Self, EmbeddedError> {
        let journal = store.namespace(NAMESPACE)?;
        let memory = MemoryDedupStore::new(window);
        let (mut records, mut deliveries) = (Vec::new(), Vec::new());
        for (key, value) in journal.load_live(store.now())? {
            match decode_entry(&key, &value) {
                Some(Entry::Record(fingerprint, record)) => records.push((fingerprint, record)),
                Some(Entry::Delivery(delivery, until)) => deliveries.push((delivery, until)),
                // Not fatal: it expires by itself; at worst one alert opens a new incident.
                None => tracing::warn!(namespace = NAMESPACE, "skipping an unreadable dedup entry"),
            }
        }
        memory.restore(records);
        memory.restore_deliveries(deliveries);
        Ok(Self { memory, journal, window, order: tokio::sync::Mutex::new(()) })
    }

    fn put(&self, fingerprint: &str, record: &Record) -> Op {
        Op::Put {
            key: record_key(fingerprint),
            value: record.encode().into_bytes(),
            expires_at: record.last_seen.saturating_add(self.window.window_ms()),
        }
    }

    /// What the store holds now for each of `queries`, to undo a call with.
    fn before(&self, queries: &[Query]) -> Before {
        Before {
            records: queries.iter().map(|q| (q.fingerprint.clone(), self.memory.record(&q.fingerprint))).collect(),
            deliveries: queries.iter().filter_map(|q| q.delivery).map(|d| (d, self.memory.delivery(d))).collect(),
        }
    }

    /// Runs `change` (a change of the memory store to the records of `fingerprints`) and
    /// journals those records as it left them, undoing it if the journal fails.
    async fn journaled(
        &self,
        fingerprints: &[&str],
        change: impl Future<Output = Result<u32, KeyspaceError>>,
    ) -> Result<u32, KeyspaceError> {
        let _order = self.order.lock().await;
        let records = fingerprints.iter().map(|&fp| (fp.to_owned(), self.memory.record(fp))).collect();
        let before = Before { records, deliveries: Vec::new() };
        let changed = change.await?;
        let ops: Vec<Op> =
            fingerprints.iter().filter_map(|&fp| self.memory.record(fp).map(|record| self.put(fp, &record))).collect();
        self.write_or_undo(&ops, before)?;
        Ok(changed)
    }

    /// Writes `ops`; when that fails, puts back what the call changed as it
    /// was `before`, so memory never runs ahead of the disk.
    fn write_or_undo(&self, ops: &[Op], before: Before) -> Result<(), KeyspaceError> {
        let Err(e) = self.journal.apply(ops) else { return Ok(()) };
        // The memory store can only insert: what did not exist comes back
        // closed (a window long over, a delivery forgotten), which every
        // decision treats as absent.
        let closed = Record {
            first_seen: UnixMillis::MIN,
            last_seen: UnixMillis::MIN,
            count: 0,
            placement: Placement::Own,
            ends_at: None,
        };
        self.memory.restore(before.records.into_iter().map(|(fp, r)| (fp, r.unwrap_or_else(|| closed.clone()))));
        self.memory
            .restore_deliveries(before.deliveries.into_iter().map(|(d, until)| (d, until.unwrap_or(UnixMillis::MIN))));
        // The trait speaks KeyspaceError; "unavailable" is what the dedup face degrades on.
        Err(KeyspaceError::Unavailable(Box::new(e)))
    }
}

/// Records and deliveries as they were before a call.
struct Before {
    records: Vec<(String, Option<Record>)>,
    deliveries: Vec<(DeliveryKey, Option<UnixMillis>)>,
}

#[async_trait]
impl DedupStore for EmbeddedDedupStore {
    async fn check(&self, queries: &[Query], now: UnixMillis) -> Result<Vec<Verdict>, KeyspaceError> {
        let _order = self.order.lock().await;
        let before = self.before(queries);
        let verdicts = self.memory.check(queries, now).await?;
        let mut ops = Vec::with_capacity(queries.len());
        for (q, v) in queries.iter().zip(&verdicts) {
            let counted = match (v.decision, &v.record) {
                (Decision::New | Decision::Duplicate, Some(record)) => {
                    ops.push(self.put(&q.fingerprint, record));
                    true
                }
                // A new or repeated incident always has its record; without one,
                // what memory holds is the truth.
                (Decision::New | Decision::Duplicate, None) => {
                    ops.push(match self.memory.record(&q.fingerprint) {
                        Some(record) => self.put(&q.fingerprint, &record),
                        None => Op::Remove { key: record_key(&q.fingerprint) },
                    });
                    true
                }
                (Decision::Resolved | Decision::ResolvedUnknown, _) => {
                    ops.push(Op::Remove { key: record_key(&q.fingerprint) });
                    true
                }
                // A copy of a counted delivery changes nothing.
                (Decision::Copy, _) => false,
            };
            if counted
                && let Some(delivery) = q.delivery
                && let Some(until) = self.memory.delivery(delivery)
            {
                ops.push(Op::Put {
                    key: delivery_key(delivery),
                    value: until.to_string().into_bytes(),
                    expires_at: until,
                });
            }
        }
        self.write_or_undo(&ops, before)?;
        Ok(verdicts)
    }

    async fn bind(&self, binds: &[Bind], now: UnixMillis) -> Result<u32, KeyspaceError> {
        let fingerprints: Vec<&str> = binds.iter().map(|b| b.fingerprint.as_str()).collect();
        self.journaled(&fingerprints, self.memory.bind(binds, now)).await
    }

    async fn end(&self, ends: &[WindowEnd], now: UnixMillis) -> Result<u32, KeyspaceError> {
        let fingerprints: Vec<&str> = ends.iter().map(|e| e.fingerprint.as_str()).collect();
        self.journaled(&fingerprints, self.memory.end(ends, now)).await
    }

    async fn placements(
        &self,
        windows: &[WindowRef],
        now: UnixMillis,
    ) -> Result<Vec<Option<Placement>>, KeyspaceError> {
        self.memory.placements(windows, now).await
    }
}

fn record_key(fingerprint: &str) -> Vec<u8> {
    [b"f", fingerprint.as_bytes()].concat()
}

fn delivery_key(delivery: DeliveryKey) -> Vec<u8> {
    [b"d", delivery.hex().as_bytes()].concat()
}

enum Entry {
    Record(String, Record),
    Delivery(DeliveryKey, UnixMillis),
}

fn decode_entry(key: &[u8], value: &[u8]) -> Option<Entry> {
    let key = std::str::from_utf8(key).ok()?;
    let value = std::str::from_utf8(value).ok()?;
    if let Some(fingerprint) = key.strip_prefix('f') {
        Some(Entry::Record(fingerprint.to_owned(), Record::decode(value)?))
    } else {
        let delivery = DeliveryKey::parse(key.strip_prefix('d')?)?;
        Some(Entry::Delivery(delivery, value.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::window::Binding;

    use breakwater_signal::ManualClock;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;
    use crate::window::Status;

    const T0: UnixMillis = 1_700_000_000_000;

    fn window() -> DedupWindow {
        DedupWindow::new(Duration::from_secs(300)).with_copy_window(Duration::from_secs(120))
    }

    fn open(dir: &std::path::Path, now: UnixMillis) -> EmbeddedDedupStore {
        let store = EmbeddedStore::open(dir, Arc::new(ManualClock::new(now))).unwrap();
        EmbeddedDedupStore::open(&store, window()).unwrap()
    }

    fn query(fingerprint: usize, firing: bool, delivery: Option<u128>) -> Query {
        Query {
            fingerprint: format!("fp{fingerprint}"),
            status: if firing { Status::Firing } else { Status::Resolved },
            delivery: delivery.map(DeliveryKey),
        }
    }

    /// The scenario at store level: a repeat after a restart is a
    /// duplicate on the same incident, bound where it was bound.
    #[tokio::test]
    async fn an_incident_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let storm = Placement::Bound(Binding { namespace: "prod".into(), name: "storm-x-1".into() });
        {
            let store = open(dir.path(), T0);
            let v = store.check(&[query(1, true, Some(7)), query(2, true, None)], T0).await.unwrap();
            assert_eq!((v[0].decision, v[1].decision), (Decision::New, Decision::New));
            let bind = Bind { fingerprint: "fp2".into(), first_seen: T0, to: storm.clone() };
            assert_eq!(store.bind(&[bind], T0).await.unwrap(), 1);
        }
        let store = open(dir.path(), T0 + 1_000);
        // The same delivery again is a copy; a new one a duplicate, counted on.
        let v = store
            .check(&[query(1, true, Some(7)), query(1, true, Some(8)), query(2, true, None)], T0 + 1_000)
            .await
            .unwrap();
        let got: Vec<_> =
            v.iter().map(|v| (v.decision, v.record.as_ref().map(|r| (r.count, r.placement.clone())))).collect();
        assert_eq!(
            got,
            vec![
                (Decision::Copy, Some((1, Placement::Pending))),
                (Decision::Duplicate, Some((2, Placement::Pending))),
                (Decision::Duplicate, Some((2, storm))),
            ]
        );
        // A resolution closes it for good, also across a reopen.
        store.check(&[query(1, false, None)], T0 + 2_000).await.unwrap();
        drop(store);
        let store = open(dir.path(), T0 + 3_000);
        assert_eq!(store.check(&[query(1, true, None)], T0 + 3_000).await.unwrap()[0].decision, Decision::New);
    }

    /// Random checks, copies, resolutions, binds and clock steps, reopened at
    /// random points: the same answers as a memory store that never stopped.
    #[test]
    fn reopened_it_answers_as_an_uninterrupted_memory_store() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let q = (0usize..4, prop::bool::weighted(0.8), prop::option::of(0u128..6));
        let step = prop_oneof![4 => 0i64..60_000, 1 => 60_000i64..400_000];
        let batch = (proptest::collection::vec(q, 1..6), step, prop::bool::weighted(0.2), any::<bool>());
        let batches = proptest::collection::vec(batch, 1..20);
        let mut runner = TestRunner::new(Config { cases: 24, failure_persistence: None, ..Config::default() });
        let result = runner.run(&batches, |batches| {
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let memory = MemoryDedupStore::new(window());
                let mut embedded = open(dir.path(), T0);
                let mut now = T0;
                for (i, (queries, step, reopen, bind)) in batches.iter().enumerate() {
                    now += step;
                    if *reopen {
                        drop(embedded);
                        embedded = open(dir.path(), now);
                    }
                    let queries: Vec<Query> = queries.iter().map(|&(f, firing, d)| query(f, firing, d)).collect();
                    let expected = memory.check(&queries, now).await.unwrap();
                    prop_assert_eq!(&embedded.check(&queries, now).await.unwrap(), &expected, "check {}", i);
                    // Place every new incident of the batch, on its own CR or a storm's.
                    let binds: Vec<Bind> = queries
                        .iter()
                        .zip(&expected)
                        .filter(|(_, v)| v.decision == Decision::New)
                        .filter_map(|(q, v)| v.record.as_ref().map(|r| (q, r)))
                        .map(|(q, r)| Bind {
                            fingerprint: q.fingerprint.clone(),
                            first_seen: r.first_seen,
                            to: if *bind {
                                Placement::Own
                            } else {
                                Placement::Bound(Binding { namespace: "ns".into(), name: format!("storm-{i}") })
                            },
                        })
                        .collect();
                    let expected = memory.bind(&binds, now).await.unwrap();
                    prop_assert_eq!(embedded.bind(&binds, now).await.unwrap(), expected, "bind {}", i);
                    let windows: Vec<WindowRef> = (0..4)
                        .map(|f| format!("fp{f}"))
                        .filter_map(|fingerprint| {
                            let first_seen = memory.record(&fingerprint)?.first_seen;
                            Some(WindowRef { fingerprint, first_seen })
                        })
                        .collect();
                    let expected = memory.placements(&windows, now).await.unwrap();
                    prop_assert_eq!(embedded.placements(&windows, now).await.unwrap(), expected, "placements {}", i);
                }
                Ok(())
            })
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    #[test]
    fn records_round_trip() {
        let bound = Placement::Bound(Binding { namespace: "prod".into(), name: "storm-a-1".into() });
        for placement in [Placement::Pending, Placement::Own, bound] {
            let r = Record { first_seen: 10, last_seen: -20, count: 3, placement, ends_at: None };
            assert_eq!(Record::decode(&r.encode()), Some(r));
        }
        for damaged in ["", "1|2|3", "a|2|3|", "1|2|3|noslash", "1|2|-3|"] {
            assert_eq!(Record::decode(damaged), None, "{damaged:?}");
        }
    }

    #[test]
    fn entries_are_told_apart_by_their_key() {
        let r = Record { first_seen: 1, last_seen: 2, count: 3, placement: Placement::Pending, ends_at: None };
        let Some(Entry::Record(fp, got)) = decode_entry(&record_key("dd1b"), r.encode().as_bytes()) else {
            panic!("record did not decode");
        };
        assert_eq!((fp.as_str(), got), ("dd1b", r));
        let d = DeliveryKey(0xabc);
        let Some(Entry::Delivery(got, until)) = decode_entry(&delivery_key(d), b"77") else {
            panic!("delivery did not decode");
        };
        assert_eq!((got, until), (d, 77));
        assert!(decode_entry(b"dnothex", b"77").is_none());
        assert!(decode_entry(b"x", b"").is_none());
    }
}
