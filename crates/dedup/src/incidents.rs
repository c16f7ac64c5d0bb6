//! Dedup's service logic, between its gRPC face and its store: where each incident is
//! counted (its own CR, another one, or not decided yet), whether dedup's state may be
//! missing incidents, and the store's health. The face only checks and converts messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use breakwater_grpc::{ComponentHealth, StoreHealth};
use breakwater_keyspace::KeyspaceError;
use breakwater_signal::{Clock, UnixMillis, incident_cr_name};

use crate::Error;
use crate::store::{Bind, DedupStore, WindowEnd, WindowRef};
use crate::window::{Binding, Decision, Placement, Query, Record};

/// A first alert still unplaced after this long is taken as placed on its own
/// CR: the edge that was placing it is gone.
const PENDING_TIMEOUT_MS: i64 = 10_000;

/// What the edge does meanwhile (design brief, degradation table).
const DEGRADED: &str = "the edge names new CRs per fallback window and Kubernetes' AlreadyExists is the dedup of last resort until it answers again";

/// Open incidents, as the edge asks about them.
pub struct Incidents {
    store: Arc<dyn DedupStore>,
    clock: Arc<dyn Clock>,
    /// Where store failures and recoveries are reported (`StatusService`).
    store_health: StoreHealth,
    /// Start of the period in which the store may be missing incidents (it failed, state
    /// maybe gone, or started empty); 0 for none. It lasts one window.
    uncertain_since: AtomicI64,
    window_ms: i64,
}

/// The answer to one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub decision: Decision,
    /// The incident's window (none for a resolution without one).
    pub window: Option<Window>,
    /// Dedup's state may miss incidents opened before it lost its store within the last
    /// window: a new incident may already have an open CR. Set for new incidents, and for
    /// copies (one may complete a first delivery that was new).
    pub state_uncertain: bool,
}

/// An incident window as the edge needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub first_seen: UnixMillis,
    pub last_seen: UnixMillis,
    /// Alerts seen in the window, this one included.
    pub count: u64,
    /// When the window ends whatever alerts still arrive (its CR was finished).
    pub ends_at: Option<UnixMillis>,
    /// Where it is counted; `None` while its first alert is still being placed.
    pub counted_on: Option<Binding>,
}

/// Where a window stands, for a repeat that raced its first alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowPlacement {
    /// The window is no longer open.
    Closed,
    /// Its first alert is still being placed.
    Pending,
    /// Counted on this CR.
    Placed(Binding),
}

impl Incidents {
    /// `window` is the dedup window. `starts_empty` says the store lost everything before
    /// now (the in-process store), so for one window new incidents are flagged uncertain.
    pub fn new(
        store: Arc<dyn DedupStore>,
        clock: Arc<dyn Clock>,
        health: Arc<ComponentHealth>,
        window: Duration,
        starts_empty: bool,
    ) -> Self {
        let since = if starts_empty { clock.now() } else { 0 };
        Self {
            store,
            clock,
            store_health: StoreHealth::new(health, DEGRADED),
            uncertain_since: AtomicI64::new(since),
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Decides and records every query, in order; `namespaces[i]` is where query `i`'s own
    /// CR goes.
    ///
    /// # Errors
    /// When the store fails: nothing was recorded.
    pub async fn check(&self, queries: &[Query], namespaces: &[&str]) -> Result<Vec<Answer>, Error> {
        let now = self.clock.now();
        let verdicts = self.observe(true, self.store.check(queries, now).await)?;
        let uncertain = self.state_uncertain(now);
        let answers = queries
            .iter()
            .zip(namespaces)
            .zip(verdicts)
            .map(|((q, namespace), v)| {
                metrics::counter!("breakwater_dedup_decisions_total", "decision" => decision_label(v.decision))
                    .increment(1);
                let window = v.record.map(|r| {
                    // A new incident is the one being placed: it names its own CR to create.
                    let pending = v.decision != Decision::New && is_pending(&r, now);
                    Window {
                        first_seen: r.first_seen,
                        last_seen: r.last_seen,
                        count: r.count,
                        ends_at: r.ends_at,
                        counted_on: (!pending).then(|| counted_on(&r, &q.fingerprint, namespace)),
                    }
                });
                Answer {
                    decision: v.decision,
                    window,
                    state_uncertain: matches!(v.decision, Decision::New | Decision::Copy) && uncertain,
                }
            })
            .collect();
        Ok(answers)
    }

    /// Places new incidents and ends windows whose CR was finished; returns how many of
    /// each applied to a still-open window.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn bind(&self, binds: &[Bind], ends: &[WindowEnd]) -> Result<(u32, u32), Error> {
        let now = self.clock.now();
        let bound = self.observe(true, self.store.bind(binds, now).await)?;
        let ended = self.observe(true, self.store.end(ends, now).await)?;
        Ok((bound, ended))
    }

    /// Where each window stands; `namespaces[i]` is where window `i`'s own CR goes.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn placements(&self, windows: &[WindowRef], namespaces: &[&str]) -> Result<Vec<WindowPlacement>, Error> {
        let now = self.clock.now();
        let found = self.observe(false, self.store.placements(windows, now).await)?;
        let placements = windows
            .iter()
            .zip(namespaces)
            .zip(found)
            .map(|((w, namespace), placement)| {
                let Some(placement) = placement else { return WindowPlacement::Closed };
                let record = Record { first_seen: w.first_seen, last_seen: now, count: 0, placement, ends_at: None };
                if is_pending(&record, now) {
                    WindowPlacement::Pending
                } else {
                    WindowPlacement::Placed(counted_on(&record, &w.fingerprint, namespace))
                }
            })
            .collect();
        Ok(placements)
    }

    fn state_uncertain(&self, now: UnixMillis) -> bool {
        let since = self.uncertain_since.load(Ordering::Relaxed);
        since != 0 && now.saturating_sub(since) < self.window_ms
    }

    /// Passes a store result through its health observer. Only a write proves recovery:
    /// reads still work when Redis is out of memory.
    fn observe<T>(&self, write: bool, result: Result<T, KeyspaceError>) -> Result<T, Error> {
        match result {
            Ok(value) => {
                if self.store_health.succeeded(write) {
                    // Whatever was open when the store failed may be gone now.
                    self.uncertain_since.store(self.clock.now(), Ordering::Relaxed);
                }
                Ok(value)
            }
            Err(e) => {
                self.store_health.failed(e.metric_label());
                Err(Error::from(e))
            }
        }
    }
}

fn is_pending(record: &Record, now: UnixMillis) -> bool {
    record.placement == Placement::Pending && now.saturating_sub(record.first_seen) < PENDING_TIMEOUT_MS
}

/// The CR counting an incident (a stale pending placement counts as its own).
fn counted_on(record: &Record, fingerprint: &str, namespace: &str) -> Binding {
    match &record.placement {
        Placement::Bound(b) => b.clone(),
        Placement::Own | Placement::Pending => {
            Binding { namespace: namespace.to_owned(), name: incident_cr_name(fingerprint, record.first_seen) }
        }
    }
}

fn decision_label(d: Decision) -> &'static str {
    match d {
        Decision::New => "new",
        Decision::Duplicate => "duplicate",
        Decision::Resolved => "resolved",
        Decision::ResolvedUnknown => "resolved_unknown",
        Decision::Copy => "copy",
    }
}

#[cfg(test)]
mod tests {
    use breakwater_signal::ManualClock;

    use super::*;
    use crate::window::{DedupWindow, Status};
    use crate::{MemoryDedupStore, WindowRef};

    const FP: &str = "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd";
    const T0: UnixMillis = 1_700_000_000_000;

    fn incidents(clock: &Arc<ManualClock>, starts_empty: bool) -> Incidents {
        let window = Duration::from_secs(300);
        let store = Arc::new(MemoryDedupStore::new(DedupWindow::new(window)));
        Incidents::new(store, clock.clone(), ComponentHealth::new("dedup"), window, starts_empty)
    }

    fn firing() -> Query {
        Query { fingerprint: FP.to_owned(), status: Status::Firing, delivery: None }
    }

    fn storm_cr() -> Binding {
        Binding { namespace: "prod".to_owned(), name: "storm-cr".to_owned() }
    }

    #[tokio::test]
    async fn a_repeat_waits_for_its_first_alert_placement_then_follows_it() {
        let clock = Arc::new(ManualClock::new(T0));
        let incidents = incidents(&clock, false);
        let first = incidents.check(&[firing()], &["prod"]).await.unwrap().remove(0);
        assert_eq!(first.decision, Decision::New);
        let own = Binding { namespace: "prod".to_owned(), name: incident_cr_name(FP, T0) };
        assert_eq!(first.window.as_ref().and_then(|w| w.counted_on.clone()), Some(own), "a new incident names its CR");
        assert!(!first.state_uncertain);

        let racing = incidents.check(&[firing()], &["prod"]).await.unwrap().remove(0);
        assert_eq!(racing.decision, Decision::Duplicate);
        assert_eq!(racing.window.as_ref().map(|w| (w.count, w.counted_on.clone())), Some((2, None)));
        let window = WindowRef { fingerprint: FP.to_owned(), first_seen: T0 };
        assert_eq!(
            incidents.placements(std::slice::from_ref(&window), &["prod"]).await.unwrap(),
            [WindowPlacement::Pending]
        );

        let bind = Bind { fingerprint: FP.to_owned(), first_seen: T0, to: Placement::Bound(storm_cr()) };
        assert_eq!(incidents.bind(&[bind], &[]).await.unwrap(), (1, 0));
        let repeat = incidents.check(&[firing()], &["prod"]).await.unwrap().remove(0);
        assert_eq!(repeat.window.and_then(|w| w.counted_on), Some(storm_cr()));
        assert_eq!(incidents.placements(&[window], &["prod"]).await.unwrap(), [WindowPlacement::Placed(storm_cr())]);
    }

    #[tokio::test]
    async fn a_placement_nobody_makes_is_taken_as_the_own_cr_after_the_timeout() {
        let clock = Arc::new(ManualClock::new(T0));
        let incidents = incidents(&clock, false);
        incidents.check(&[firing()], &["prod"]).await.unwrap();
        clock.advance_ms(PENDING_TIMEOUT_MS);
        let repeat = incidents.check(&[firing()], &["prod"]).await.unwrap().remove(0);
        let own = Binding { namespace: "prod".to_owned(), name: incident_cr_name(FP, T0) };
        assert_eq!(repeat.window.and_then(|w| w.counted_on), Some(own));
    }

    #[tokio::test]
    async fn a_store_that_starts_empty_flags_new_incidents_uncertain_for_one_window() {
        let clock = Arc::new(ManualClock::new(T0));
        let incidents = incidents(&clock, true);
        assert!(incidents.check(&[firing()], &["prod"]).await.unwrap()[0].state_uncertain);
        clock.advance_ms(300_000);
        let other = Query { fingerprint: FP.replace('a', "0"), ..firing() };
        assert!(!incidents.check(&[other], &["prod"]).await.unwrap()[0].state_uncertain);
    }
}
