//! The storm decision, pure: a function of the window's state, whether the
//! alert's resource is already listed, and the time. `MemoryStormStore` calls
//! it; `store/detect.lua` is its Redis twin.
//!
//! A window per (namespace, alertname) opens with its first new incident,
//! slides while alerts keep coming less than `inactivity` apart, and closes at
//! `max_window` after it opened at the latest. Inside a window, more than
//! `rate_threshold` alerts, or more than `pattern_threshold` distinct
//! resources, open a storm: that alert creates the storm CR and every later
//! alert of the window is counted on it.

use std::time::Duration;

use breakwater_signal::UnixMillis;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StormType {
    Rate,
    Pattern,
}

/// The rules, validated by `StormConfig::validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StormRules {
    pub rate_threshold: u64,
    pub pattern_threshold: u64,
    pub inactivity_ms: i64,
    pub max_window_ms: i64,
    /// Most resources listed per window (and so on a storm CR).
    pub list_cap: u64,
    /// How long a storm's alert counter lives after its last increment; at
    /// least the dedup window, so repeats of folded alerts are still counted.
    pub count_ttl_ms: i64,
    /// How long a counted delivery is remembered, so its copy adds nothing.
    pub copy_window_ms: i64,
}

impl StormRules {
    pub fn new(rate: u64, pattern: u64, inactivity: Duration, max_window: Duration, list_cap: u64) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1);
        Self {
            rate_threshold: rate,
            pattern_threshold: pattern,
            inactivity_ms: ms(inactivity),
            max_window_ms: ms(max_window),
            list_cap,
            count_ttl_ms: ms(max_window).max(ms(Duration::from_secs(900))),
            copy_window_ms: ms(Duration::from_secs(120)),
        }
    }

    #[must_use]
    pub fn with_copy_window(mut self, window: Duration) -> Self {
        self.copy_window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
        self
    }

    #[must_use]
    pub fn with_count_ttl(mut self, ttl: Duration) -> Self {
        self.count_ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        self
    }

    /// Whether `window` still accepts alerts at `now`.
    pub fn is_open(&self, window: &Window, now: UnixMillis) -> bool {
        now.saturating_sub(window.last) < self.inactivity_ms && now.saturating_sub(window.start) < self.max_window_ms
    }

    /// Decides one alert. `listed` says whether its resource is already on the
    /// window's list (ignored when the window is closed: a new one starts empty).
    /// The verdict's `storm_alerts` is left 0: the storm's counter lives apart
    /// from the window (it outlives it), and the store applies `Next::count`.
    pub fn decide(&self, window: Option<&Window>, listed: bool, now: UnixMillis) -> (Verdict, Next) {
        let (mut w, reset, listed) = match window.filter(|w| self.is_open(w, now)) {
            Some(w) => (w.clone(), false, listed),
            None => (Window::opening(now), true, false),
        };
        w.alerts += 1;
        w.last = w.last.max(now);
        let mut add_resource = false;
        if !listed {
            if w.distinct < self.list_cap {
                w.distinct += 1;
                add_resource = true;
            } else {
                w.omitted += 1;
            }
        }
        let outcome = match w.storm {
            Some(_) => Outcome::Joined,
            None => {
                w.storm = if w.alerts > self.rate_threshold {
                    Some(StormType::Rate)
                } else if w.distinct > self.pattern_threshold {
                    Some(StormType::Pattern)
                } else {
                    None
                };
                if w.storm.is_some() { Outcome::Opened } else { Outcome::None }
            }
        };
        let count = match outcome {
            Outcome::None => CountChange::None,
            Outcome::Opened => CountChange::Start,
            Outcome::Joined => CountChange::Increment,
        };
        let verdict = Verdict {
            outcome,
            storm: w.storm,
            window_start: w.start,
            storm_alerts: 0,
            resource_listed: listed || add_resource,
            omitted: w.omitted,
        };
        (verdict, Next { window: w, reset, add_resource, count })
    }
}

/// What a store keeps per (namespace, alertname): constant size, plus the
/// capped resource list kept beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub start: UnixMillis,
    pub last: UnixMillis,
    /// Alerts (new incidents) seen in the window.
    pub alerts: u64,
    /// Distinct resources on the list (at most `list_cap`).
    pub distinct: u64,
    /// Alerts whose resource did not fit the list.
    pub omitted: u64,
    pub storm: Option<StormType>,
}

impl Window {
    fn opening(now: UnixMillis) -> Self {
        Self { start: now, last: now, alerts: 0, distinct: 0, omitted: 0, storm: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not (yet) a storm: the alert gets its own CR.
    None,
    /// This alert opened the storm: it creates the storm CR.
    Opened,
    /// Counted on the open storm's CR.
    Joined,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub storm: Option<StormType>,
    pub window_start: UnixMillis,
    pub storm_alerts: u64,
    pub resource_listed: bool,
    pub omitted: u64,
}

/// How the store must change: the new window state; `reset` drops the old
/// resource list; `add_resource` adds this alert's resource to the list;
/// `count` changes the storm's alert counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    pub window: Window,
    pub reset: bool,
    pub add_resource: bool,
    pub count: CountChange,
}

/// What happens to the storm's alert counter (kept per storm CR, apart from
/// the window, so repeats of folded alerts can be counted after it closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountChange {
    None,
    /// The storm opened: its counter starts at 1.
    Start,
    /// One more alert on the open storm.
    Increment,
}

#[cfg(test)]
mod tests;
