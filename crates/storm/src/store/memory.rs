//! In-process storm store, for tests and split-mode `storm` without a
//! configured store; `EmbeddedStormStore` journals its changes to disk.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
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

type WindowKey = (String, String);

#[derive(Debug, Default)]
struct State {
    windows: HashMap<WindowKey, (Window, Vec<String>)>,
    /// Alerts per storm CR name, and when the counter may be dropped.
    counters: HashMap<String, (u64, UnixMillis)>,
    /// Deliveries counted, and until when a copy of each adds nothing.
    deliveries: HashMap<u128, UnixMillis>,
    sweep_at: usize,
}

/// What one call changed, for a journal: the resulting state of every window
/// and counter it touched, and the resources it added to window lists.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub(crate) windows: Vec<(WindowKey, Window)>,
    /// (window, the window's start, resource id).
    pub(crate) resources: Vec<(WindowKey, UnixMillis, String)>,
    /// (storm CR name, alerts, expiry).
    pub(crate) counters: Vec<(String, u64, UnixMillis)>,
    /// (delivery, until when it is remembered).
    pub(crate) deliveries: Vec<(u128, UnixMillis)>,
}

/// Where changes go before a call answers; an error undoes the call.
pub(crate) type Journal<'a> = &'a dyn Fn(&Changes) -> Result<(), KeyspaceError>;

/// How to put back what a call touched if its journal write fails.
#[derive(Default)]
struct Undo {
    windows: HashMap<WindowKey, WindowBefore>,
    counters: HashMap<String, Option<(u64, UnixMillis)>>,
    resources: Vec<(WindowKey, UnixMillis, String)>,
    /// Deliveries the call remembered (forgotten again on revert: one that was remembered
    /// before had expired, or it would not have counted).
    deliveries: Vec<u128>,
}

enum WindowBefore {
    Absent,
    /// The window and its list's length; lists only grow, or are replaced
    /// (`replaced` keeps the old one) when a closed window starts over.
    Present {
        window: Window,
        list_len: usize,
        replaced: Option<Vec<String>>,
    },
}

impl Undo {
    fn touch_window(&mut self, state: &State, key: &WindowKey) {
        if !self.windows.contains_key(key) {
            let before = match state.windows.get(key) {
                None => WindowBefore::Absent,
                Some((window, list)) => {
                    WindowBefore::Present { window: window.clone(), list_len: list.len(), replaced: None }
                }
            };
            self.windows.insert(key.clone(), before);
        }
    }

    fn touch_counter(&mut self, state: &State, name: &str) {
        if !self.counters.contains_key(name) {
            self.counters.insert(name.to_owned(), state.counters.get(name).copied());
        }
    }

    /// Keeps a list that a window starting over drops, the first time only:
    /// that one holds the list as it was before the call.
    fn replaced(&mut self, key: &WindowKey, list: Vec<String>) {
        if let Some(WindowBefore::Present { replaced: replaced @ None, .. }) = self.windows.get_mut(key) {
            *replaced = Some(list);
        }
    }

    fn changes(&self, state: &State) -> Changes {
        Changes {
            windows: self
                .windows
                .keys()
                .filter_map(|key| state.windows.get(key).map(|(window, _)| (key.clone(), window.clone())))
                .collect(),
            resources: self.resources.clone(),
            counters: self
                .counters
                .keys()
                .filter_map(|name| state.counters.get(name).map(|&(n, expires)| (name.clone(), n, expires)))
                .collect(),
            deliveries: self
                .deliveries
                .iter()
                .filter_map(|d| state.deliveries.get(d).map(|&until| (*d, until)))
                .collect(),
        }
    }

    fn revert(self, state: &mut State) {
        for (key, before) in self.windows {
            match before {
                WindowBefore::Absent => {
                    state.windows.remove(&key);
                }
                WindowBefore::Present { window, list_len, replaced } => {
                    let current = state.windows.remove(&key).map(|(_, list)| list);
                    let mut list = replaced.or(current).unwrap_or_default();
                    list.truncate(list_len);
                    state.windows.insert(key, (window, list));
                }
            }
        }
        for (name, before) in self.counters {
            match before {
                None => state.counters.remove(&name),
                Some(counter) => state.counters.insert(name, counter),
            };
        }
        for delivery in self.deliveries {
            state.deliveries.remove(&delivery);
        }
    }
}

impl State {
    /// Adds to a storm's counter; one past its expiry starts over, as an
    /// expired Redis key would.
    fn add(&mut self, name: String, alerts: u64, now: UnixMillis, expires: UnixMillis) -> u64 {
        let counter = self.counters.entry(name).or_insert((0, expires));
        if counter.1 <= now {
            counter.0 = 0;
        }
        counter.0 += alerts;
        counter.1 = expires;
        counter.0
    }
}

impl State {
    /// Adds to a storm's counter if it is still held; 0 when it is not (lost with the
    /// store's state, or expired), and nothing is created: no total is known then.
    fn add_existing(&mut self, name: &str, alerts: u64, now: UnixMillis, expires: UnixMillis) -> u64 {
        match self.counters.get_mut(name) {
            Some(counter) if counter.1 > now => {
                counter.0 += alerts;
                counter.1 = expires;
                counter.0
            }
            _ => 0,
        }
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

    /// Puts back windows (with their resource lists) and counters saved
    /// elsewhere, replacing any held.
    pub(crate) fn restore(
        &self,
        windows: impl IntoIterator<Item = (WindowKey, (Window, Vec<String>))>,
        counters: impl IntoIterator<Item = (String, (u64, UnixMillis))>,
        deliveries: impl IntoIterator<Item = (u128, UnixMillis)>,
    ) {
        let mut state = self.lock();
        state.windows.extend(windows);
        state.counters.extend(counters);
        state.deliveries.extend(deliveries);
        state.sweep_at = ((state.windows.len() + state.counters.len()) * 2).max(1024);
    }

    /// [`StormStore::detect`]; with a `journal`, hands it the changes while
    /// still holding the lock, so journal order is decision order, and
    /// undoes the call if it fails.
    pub(crate) fn detect_journaled(
        &self,
        queries: &[StormQuery],
        now: UnixMillis,
        journal: Option<Journal<'_>>,
    ) -> Result<Vec<Verdict>, KeyspaceError> {
        let mut state = self.lock();
        let mut undo = journal.map(|_| Undo::default());
        let expires = now.saturating_add(self.rules.count_ttl_ms);
        let remember_until = now.saturating_add(self.rules.copy_window_ms);
        let mut verdicts = Vec::with_capacity(queries.len());
        for q in queries {
            let key = (q.namespace.clone(), q.alert_name.clone());
            if let Some(undo) = &mut undo {
                undo.touch_window(&state, &key);
            }
            let current = state.windows.get(&key);
            let listed = current.is_some_and(|(_, list)| list.contains(&q.resource_id));
            let (mut verdict, next) = self.rules.decide(current.map(|(w, _)| w), listed, now);
            if next.count != CountChange::None {
                let name = storm_cr_name(&q.namespace, &q.alert_name, next.window.start);
                if let Some(undo) = &mut undo {
                    undo.touch_counter(&state, &name);
                }
                if next.count == CountChange::Start {
                    state.counters.remove(&name);
                }
                verdict.storm_alerts = state.add(name, 1, now, expires);
                if let Some(delivery) = q.delivery {
                    state.deliveries.insert(delivery, remember_until);
                    if let Some(undo) = &mut undo {
                        undo.deliveries.push(delivery);
                    }
                }
            }
            let mut list = match state.windows.remove(&key) {
                Some((_, list)) if !next.reset => list,
                Some((_, list)) => {
                    if let Some(undo) = &mut undo {
                        undo.replaced(&key, list);
                    }
                    Vec::new()
                }
                None => Vec::new(),
            };
            if next.add_resource {
                list.push(q.resource_id.clone());
                if let Some(undo) = &mut undo {
                    undo.resources.push((key.clone(), next.window.start, q.resource_id.clone()));
                }
            }
            state.windows.insert(key, (next.window, list));
            verdicts.push(verdict);
        }
        if let (Some(journal), Some(undo)) = (journal, undo)
            && let Err(e) = journal(&undo.changes(&state))
        {
            undo.revert(&mut state);
            return Err(e);
        }
        if state.windows.len() + state.counters.len() >= state.sweep_at {
            let rules = self.rules;
            state.windows.retain(|_, (w, _)| rules.is_open(w, now));
            state.counters.retain(|_, (_, expires)| *expires > now);
            state.sweep_at = ((state.windows.len() + state.counters.len()) * 2).max(1024);
        }
        Ok(verdicts)
    }

    /// [`StormStore::count`], journaled like [`MemoryStormStore::detect_journaled`].
    pub(crate) fn count_journaled(
        &self,
        storms: &[StormCount],
        now: UnixMillis,
        journal: Option<Journal<'_>>,
    ) -> Result<Vec<u64>, KeyspaceError> {
        let mut state = self.lock();
        let expires = now.saturating_add(self.rules.count_ttl_ms);
        let remember_until = now.saturating_add(self.rules.copy_window_ms);
        let mut before: HashMap<String, Option<(u64, UnixMillis)>> = HashMap::new();
        let mut remembered = Vec::new();
        let mut totals = Vec::with_capacity(storms.len());
        for s in storms {
            if journal.is_some()
                && let Entry::Vacant(slot) = before.entry(s.name.clone())
            {
                slot.insert(state.counters.get(&s.name).copied());
            }
            let mut alerts = s.alerts;
            if let Some(delivery) = s.delivery {
                if state.deliveries.get(&delivery).is_some_and(|&until| now < until) {
                    alerts = 0;
                } else if state.counters.get(&s.name).is_some_and(|&(_, counter_expires)| counter_expires > now) {
                    // Remembered only where it counts: a counter that is not held counts nothing.
                    state.deliveries.insert(delivery, remember_until);
                    remembered.push(delivery);
                }
            }
            totals.push(state.add_existing(&s.name, alerts, now, expires));
        }
        if state.deliveries.len() >= state.sweep_at {
            state.deliveries.retain(|_, until| *until > now);
            state.sweep_at = state.sweep_at.max(state.deliveries.len() * 2);
        }
        if let Some(journal) = journal {
            let undo = Undo { counters: before, deliveries: remembered, ..Undo::default() };
            if let Err(e) = journal(&undo.changes(&state)) {
                undo.revert(&mut state);
                return Err(e);
            }
        }
        Ok(totals)
    }
}

#[async_trait]
impl StormStore for MemoryStormStore {
    async fn detect(&self, queries: &[StormQuery], now: UnixMillis) -> Result<Vec<Verdict>, KeyspaceError> {
        self.detect_journaled(queries, now, None)
    }

    async fn count(&self, storms: &[StormCount], now: UnixMillis) -> Result<Vec<u64>, KeyspaceError> {
        self.count_journaled(storms, now, None)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T0: UnixMillis = 1_000_000;

    fn alert(pod: usize) -> StormQuery {
        StormQuery {
            namespace: "prod".into(),
            alert_name: "PodCrash".into(),
            resource_id: format!("pod-{pod}"),
            delivery: None,
        }
    }

    fn failing(_: &Changes) -> Result<(), KeyspaceError> {
        Err(KeyspaceError::Timeout)
    }

    /// A call whose journal write fails leaves no trace: the next calls decide
    /// as if it never happened.
    #[test]
    fn a_failed_journal_write_undoes_the_call() {
        let rules = StormRules::new(10, 2, Duration::from_secs(60), Duration::from_secs(300), 100);
        let (store, untouched) = (MemoryStormStore::new(rules), MemoryStormStore::new(rules));
        let three: Vec<_> = (0..3).map(alert).collect();
        for s in [&store, &untouched] {
            s.detect_journaled(&three, T0, None).unwrap();
        }
        // Joins the storm and counts repeats; then, 61 s later, starts a new window.
        let journal: Journal<'_> = &failing;
        assert!(store.detect_journaled(&[alert(3), alert(0)], T0 + 1, Some(journal)).is_err());
        assert!(store.detect_journaled(&[alert(4)], T0 + 61_001, Some(journal)).is_err());
        let name = storm_cr_name("prod", "PodCrash", T0);
        assert!(
            store
                .count_journaled(&[StormCount { name: name.clone(), alerts: 5, delivery: None }], T0 + 2, Some(journal))
                .is_err()
        );
        for s in [&store, &untouched] {
            let v = s.detect_journaled(&[alert(3)], T0 + 3, None).unwrap();
            assert_eq!((v[0].storm_alerts, v[0].window_start), (2, T0));
            assert_eq!(
                s.count_journaled(&[StormCount { name: name.clone(), alerts: 1, delivery: None }], T0 + 4, None)
                    .unwrap(),
                [3]
            );
        }
    }

    /// A journal sees the resulting state of what a call touched.
    #[test]
    fn the_journal_sees_the_resulting_state() {
        let rules = StormRules::new(10, 1, Duration::from_secs(60), Duration::from_secs(300), 100);
        let store = MemoryStormStore::new(rules);
        let seen = Mutex::new(Vec::new());
        let journal = |c: &Changes| {
            seen.lock().unwrap().push(format!("{:?}", (&c.windows, &c.resources, &c.counters)));
            Ok(())
        };
        store.detect_journaled(&[alert(0), alert(1), alert(1)], T0, Some(&journal)).unwrap();
        let seen = seen.into_inner().unwrap();
        let key = ("prod".to_owned(), "PodCrash".to_owned());
        let window =
            Window { start: T0, last: T0, alerts: 3, distinct: 2, omitted: 0, storm: Some(crate::StormType::Pattern) };
        let expected = Changes {
            windows: vec![(key.clone(), window)],
            resources: vec![(key.clone(), T0, "pod-0".into()), (key, T0, "pod-1".into())],
            counters: vec![(storm_cr_name("prod", "PodCrash", T0), 2, T0 + rules.count_ttl_ms)],
            deliveries: Vec::new(),
        };
        assert_eq!(seen, vec![format!("{:?}", (&expected.windows, &expected.resources, &expected.counters))]);
    }
}
