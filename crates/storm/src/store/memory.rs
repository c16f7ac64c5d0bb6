//! In-process storm store: the embedded default.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use breakwater_keyspace::KeyspaceError;
use breakwater_signal::UnixMillis;

use super::{StormQuery, StormStore};
use crate::detector::{StormRules, Verdict, Window};

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
    sweep_at: usize,
}

impl MemoryStormStore {
    pub fn new(rules: StormRules) -> Self {
        Self { rules, state: Mutex::new(State { windows: HashMap::new(), sweep_at: 1024 }) }
    }
}

#[async_trait]
impl StormStore for MemoryStormStore {
    async fn detect(&self, queries: &[StormQuery], now: UnixMillis) -> Result<Vec<Verdict>, KeyspaceError> {
        // A poisoned lock cannot hold a half-applied change: each change is one assignment.
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let verdicts = queries
            .iter()
            .map(|q| {
                let key = (q.namespace.clone(), q.alert_name.clone());
                let current = state.windows.get(&key);
                let listed = current.is_some_and(|(_, list)| list.contains(&q.resource_id));
                let (verdict, next) = self.rules.decide(current.map(|(w, _)| w), listed, now);
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
        if state.windows.len() >= state.sweep_at {
            let rules = self.rules;
            state.windows.retain(|_, (w, _)| rules.is_open(w, now));
            state.sweep_at = (state.windows.len() * 2).max(1024);
        }
        Ok(verdicts)
    }
}
