//! In-process dedup store: the embedded default.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use breakwater_keyspace::KeyspaceError;
use breakwater_signal::UnixMillis;

use super::{Bind, DedupStore, WindowEnd, WindowRef};
use crate::window::{Change, DedupWindow, DeliveryKey, Placement, Query, Record, Verdict};

/// Open incidents and recent deliveries in maps; closed incidents and expired
/// deliveries are swept whenever the maps have doubled since the last sweep,
/// so memory follows the number of open incidents and recent deliveries.
#[derive(Debug)]
pub struct MemoryDedupStore {
    window: DedupWindow,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    records: HashMap<String, Record>,
    /// Deliveries counted, and until when a copy of each is recognised.
    deliveries: HashMap<DeliveryKey, UnixMillis>,
    sweep_at: usize,
}

impl State {
    fn held(&self) -> usize {
        self.records.len() + self.deliveries.len()
    }
}

impl MemoryDedupStore {
    pub fn new(window: DedupWindow) -> Self {
        Self { window, state: Mutex::new(State { sweep_at: 1024, ..State::default() }) }
    }

    /// Open incidents held right now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record held for `fingerprint`, open or not yet swept.
    pub fn record(&self, fingerprint: &str) -> Option<Record> {
        self.lock().records.get(fingerprint).cloned()
    }

    /// Puts back records saved elsewhere (an on-disk journal), replacing any held.
    pub fn restore(&self, records: impl IntoIterator<Item = (String, Record)>) {
        let mut state = self.lock();
        state.records.extend(records);
        state.sweep_at = (state.held() * 2).max(1024);
    }

    /// Until when a copy of `delivery` is recognised, if it is remembered.
    pub fn delivery(&self, delivery: DeliveryKey) -> Option<UnixMillis> {
        self.lock().deliveries.get(&delivery).copied()
    }

    /// Puts back deliveries saved elsewhere, with until when each is remembered.
    pub fn restore_deliveries(&self, deliveries: impl IntoIterator<Item = (DeliveryKey, UnixMillis)>) {
        let mut state = self.lock();
        state.deliveries.extend(deliveries);
        state.sweep_at = (state.held() * 2).max(1024);
    }

    /// Applies `change` to the record of each window (fingerprint, first_seen) that is still
    /// open and still that window, with the window's index; how many there were.
    fn change_open<'a>(
        &self,
        windows: impl Iterator<Item = (&'a str, UnixMillis)>,
        now: UnixMillis,
        mut change: impl FnMut(&mut Record, usize),
    ) -> u32 {
        let mut state = self.lock();
        let mut changed = 0;
        for (i, (fingerprint, first_seen)) in windows.enumerate() {
            if let Some(r) = state.records.get_mut(fingerprint)
                && r.first_seen == first_seen
                && self.window.is_open(r, now)
            {
                change(r, i);
                changed += 1;
            }
        }
        changed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a record half-written
        // (each change is one insert or remove), so a poisoned map is still sound.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl DedupStore for MemoryDedupStore {
    async fn check(&self, queries: &[Query], now: UnixMillis) -> Result<Vec<Verdict>, KeyspaceError> {
        let mut state = self.lock();
        let remember_until = now.saturating_add(self.window.copy_window_ms());
        let verdicts = queries
            .iter()
            .map(|q| {
                if let Some(delivery) = q.delivery {
                    if state.deliveries.get(&delivery).is_some_and(|&until| now < until) {
                        return self.window.copy_of(state.records.get(&q.fingerprint), now);
                    }
                    state.deliveries.insert(delivery, remember_until);
                }
                let (verdict, change) = self.window.decide(state.records.get(&q.fingerprint), q.status, now);
                match change {
                    Change::Put(record) => {
                        state.records.insert(q.fingerprint.clone(), record);
                    }
                    Change::Remove => {
                        state.records.remove(&q.fingerprint);
                    }
                }
                verdict
            })
            .collect();
        if state.held() >= state.sweep_at {
            let window = self.window;
            state.records.retain(|_, r| window.is_open(r, now));
            state.deliveries.retain(|_, &mut until| now < until);
            state.sweep_at = (state.held() * 2).max(1024);
        }
        Ok(verdicts)
    }

    async fn bind(&self, binds: &[Bind], now: UnixMillis) -> Result<u32, KeyspaceError> {
        Ok(self.change_open(binds.iter().map(|b| (b.fingerprint.as_str(), b.first_seen)), now, |r, i| {
            r.placement = binds[i].to.clone();
        }))
    }

    async fn end(&self, ends: &[WindowEnd], now: UnixMillis) -> Result<u32, KeyspaceError> {
        Ok(self.change_open(ends.iter().map(|e| (e.fingerprint.as_str(), e.first_seen)), now, |r, i| {
            r.ends_at = Some(ends[i].ends_at);
        }))
    }

    async fn placements(
        &self,
        windows: &[WindowRef],
        now: UnixMillis,
    ) -> Result<Vec<Option<Placement>>, KeyspaceError> {
        let state = self.lock();
        Ok(windows
            .iter()
            .map(|w| {
                state
                    .records
                    .get(&w.fingerprint)
                    .filter(|r| r.first_seen == w.first_seen && self.window.is_open(r, now))
                    .map(|r| r.placement.clone())
            })
            .collect())
    }
}
