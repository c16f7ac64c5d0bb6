//! In-process storm store: the embedded default.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use breakwater_keyspace::KeyspaceError;
use breakwater_signal::UnixMillis;

use breakwater_signal::storm_cr_name;

use super::{StormCount, StormQuery, StormStore};
use crate::detector::{CountChange, StormRules, Verdict, Window};

/// Windows in a map keyed by (namespace, alertname), each with its capped
/// resource list; closed windows are swept when the map has doubled.
#[derive(Debug)]
pub struct MemoryStormStore {
    rules: StormRules,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    windows: HashMap<(String, String), (Window, Vec<String>)>,
    /// Alerts per storm CR name, and when the counter may be dropped.
    counters: HashMap<String, (u64, UnixMillis)>,
    sweep_at: usize,
}

impl State {
    fn add(&mut self, name: String, alerts: u64, expires: UnixMillis) -> u64 {
        let counter = self.counters.entry(name).or_insert((0, expires));
        counter.0 += alerts;
        counter.1 = expires;
        counter.0
    }
}

impl MemoryStormStore {
    pub fn new(rules: StormRules) -> Self {
        Self { rules, state: Mutex::new(State { sweep_at: 1024, ..State::default() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock cannot hold a half-applied change: each change is one assignment.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl StormStore for MemoryStormStore {
    async fn detect(&self, queries: &[StormQuery], now: UnixMillis) -> Result<Vec<Verdict>, KeyspaceError> {
        let mut state = self.lock();
        let expires = now.saturating_add(self.rules.count_ttl_ms);
        let verdicts = queries
            .iter()
            .map(|q| {
                let key = (q.namespace.clone(), q.alert_name.clone());
                let current = state.windows.get(&key);
                let listed = current.is_some_and(|(_, list)| list.contains(&q.resource_id));
                let (mut verdict, next) = self.rules.decide(current.map(|(w, _)| w), listed, now);
                if next.count != CountChange::None {
                    let name = storm_cr_name(&q.namespace, &q.alert_name, next.window.start);
                    if next.count == CountChange::Start {
                        state.counters.remove(&name);
                    }
                    verdict.storm_alerts = state.add(name, 1, expires);
                }
                let mut list = match state.windows.remove(&key) {
                    Some((_, list)) if !next.reset => list,
                    _ => Vec::new(),
                };
                if next.add_resource {
                    list.push(q.resource_id.clone());
                }
                state.windows.insert(key, (next.window, list));
                verdict
            })
            .collect();
        if state.windows.len() + state.counters.len() >= state.sweep_at {
            let rules = self.rules;
            state.windows.retain(|_, (w, _)| rules.is_open(w, now));
            state.counters.retain(|_, (_, expires)| *expires > now);
            state.sweep_at = ((state.windows.len() + state.counters.len()) * 2).max(1024);
        }
        Ok(verdicts)
    }

    async fn count(&self, storms: &[StormCount], now: UnixMillis) -> Result<Vec<u64>, KeyspaceError> {
        let mut state = self.lock();
        let expires = now.saturating_add(self.rules.count_ttl_ms);
        Ok(storms.iter().map(|s| state.add(s.name.clone(), s.alerts, expires)).collect())
    }
}
