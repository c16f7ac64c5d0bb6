//! Storm's service logic, between its gRPC face and its store: each verdict's storm CR (its
//! name from namespace, alert name and window), the storms this instance opened (the
//! `breakwater_storms_active` gauge), the decision metrics, and the store's health. The face
//! only checks and converts messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use breakwater_grpc::{ComponentHealth, StoreHealth};
use breakwater_keyspace::KeyspaceError;
use breakwater_signal::{Clock, UnixMillis, storm_cr_name};

use crate::Error;
use crate::detector::{Outcome, StormRules, StormType, Verdict, Window};
use crate::store::{StormCount, StormQuery, StormStore};

/// What the edge does meanwhile (design brief, degradation table).
const DEGRADED: &str = "no storm detection, every alert gets its own CR until it answers again";

/// Storm windows, as the edge asks about them.
pub struct Storms {
    store: Arc<dyn StormStore>,
    clock: Arc<dyn Clock>,
    /// Where store failures and recoveries are reported (`StatusService`).
    store_health: StoreHealth,
    active: ActiveStorms,
}

/// One query's verdict, with the storm CR it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub verdict: Verdict,
    /// The storm CR's name, for an alert that opened or joined a storm.
    pub storm_cr: Option<String>,
}

impl Storms {
    /// `rules` tell when a storm this service opened is over, for `breakwater_storms_active`.
    pub fn new(
        store: Arc<dyn StormStore>,
        clock: Arc<dyn Clock>,
        health: Arc<ComponentHealth>,
        rules: StormRules,
    ) -> Self {
        Self {
            store,
            clock,
            store_health: StoreHealth::new(health, DEGRADED),
            active: ActiveStorms { rules, open: Mutex::new(HashMap::new()) },
        }
    }

    /// The window's length: it closes this long after its last alert (the storm CR's
    /// `stormWindow`), in seconds.
    pub fn window_secs(&self) -> u64 {
        u64::try_from(self.active.rules.inactivity_ms / 1000).unwrap_or(0)
    }

    /// Decides and records every query, in order.
    ///
    /// # Errors
    /// When the store fails: nothing was recorded.
    pub async fn detect(&self, queries: &[StormQuery]) -> Result<Vec<Detected>, Error> {
        let now = self.clock.now();
        let verdicts = self.observe(self.store.detect(queries, now).await)?;
        let detected = queries
            .iter()
            .zip(verdicts)
            .map(|(q, verdict)| {
                let label = match verdict.outcome {
                    Outcome::None => "none",
                    Outcome::Opened => "opened",
                    Outcome::Joined => "joined",
                };
                metrics::counter!("breakwater_storm_decisions_total", "outcome" => label).increment(1);
                if verdict.outcome == Outcome::Opened {
                    let kind = if verdict.storm == Some(StormType::Pattern) { "pattern" } else { "rate" };
                    metrics::counter!("breakwater_storms_opened_total", "type" => kind).increment(1);
                }
                let storm_cr = (verdict.outcome != Outcome::None).then(|| {
                    let name = storm_cr_name(&q.namespace, &q.alert_name, verdict.window_start);
                    self.active.record(&name, verdict.window_start, verdict.outcome == Outcome::Opened, now);
                    name
                });
                Detected { verdict, storm_cr }
            })
            .collect();
        Ok(detected)
    }

    /// Counts repeats on their storms; each storm's total, in order (0: storm no longer
    /// knows that storm's count, and nothing was added).
    ///
    /// # Errors
    /// When the store fails: nothing was counted.
    pub async fn count(&self, counts: &[StormCount]) -> Result<Vec<u64>, Error> {
        self.observe(self.store.count(counts, self.clock.now()).await)
    }

    /// Brings `breakwater_storms_active` up to date without waiting for an alert.
    pub fn refresh_active_storms(&self) {
        self.active.expire(self.clock.now());
    }

    /// Storms this instance opened that are still open (the gauge's value).
    #[cfg(test)]
    pub(crate) fn active_storms(&self) -> usize {
        self.active.open.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Passes a store result through its health observer.
    fn observe<T>(&self, result: Result<T, KeyspaceError>) -> Result<T, Error> {
        match result {
            Ok(value) => {
                // Every storm call writes.
                self.store_health.succeeded(true);
                Ok(value)
            }
            Err(e) => {
                self.store_health.failed(e.metric_label());
                Err(Error::from(e))
            }
        }
    }
}

/// Storms this instance opened, until their window closes by inactivity or
/// age (the same rule the detector applies): the `breakwater_storms_active` gauge.
struct ActiveStorms {
    rules: StormRules,
    /// Storm CR name → its window's start and last alert.
    open: Mutex<HashMap<String, Window>>,
}

impl ActiveStorms {
    /// Records an alert opening (`opened`) or joining a storm at `now`. Ended
    /// storms are dropped by [`ActiveStorms::expire`], not on this per-alert path.
    fn record(&self, name: &str, window_start: UnixMillis, opened: bool, now: UnixMillis) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        match open.get_mut(name) {
            Some(window) => window.last = now,
            None if opened => {
                let window = Window { start: window_start, last: now, alerts: 0, distinct: 0, omitted: 0, storm: None };
                open.insert(name.to_owned(), window);
                metrics::gauge!("breakwater_storms_active").set(open.len() as f64);
            }
            None => {}
        }
    }

    /// Drops storms whose window has closed by `now` and sets the gauge.
    fn expire(&self, now: UnixMillis) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|_, window| self.rules.is_open(window, now));
        metrics::gauge!("breakwater_storms_active").set(open.len() as f64);
    }
}
