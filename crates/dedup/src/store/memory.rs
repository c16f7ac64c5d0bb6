//! In-process dedup store: the embedded default.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use breakwater_keyspace::KeyspaceError;
use breakwater_signal::UnixMillis;

use super::{Bind, DedupStore, WindowRef};
use crate::window::{Change, DedupWindow, Placement, Query, Record, Verdict};

/// Open incidents in a map; closed ones are swept whenever the map has doubled
/// since the last sweep, so memory follows the number of open incidents.
#[derive(Debug)]
pub struct MemoryDedupStore {
    window: DedupWindow,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    records: HashMap<String, Record>,
    sweep_at: usize,
}

impl MemoryDedupStore {
    pub fn new(window: DedupWindow) -> Self {
        Self { window, state: Mutex::new(State { records: HashMap::new(), sweep_at: 1024 }) }
    }

    /// Open incidents held right now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        let verdicts = queries
            .iter()
            .map(|q| {
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
        if state.records.len() >= state.sweep_at {
            let window = self.window;
            state.records.retain(|_, r| window.is_open(r, now));
            state.sweep_at = (state.records.len() * 2).max(1024);
        }
        Ok(verdicts)
    }

    async fn bind(&self, binds: &[Bind], now: UnixMillis) -> Result<u32, KeyspaceError> {
        let mut state = self.lock();
        let mut bound = 0;
        for b in binds {
            if let Some(r) = state.records.get_mut(&b.fingerprint)
                && r.first_seen == b.first_seen
                && self.window.is_open(r, now)
            {
                r.placement = b.to.clone();
                bound += 1;
            }
        }
        Ok(bound)
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
