//! The dedup decision, pure: a function of the stored record, the signal's
//! status and the time. `MemoryDedupStore` calls it; `store/check.lua` is its
//! Redis twin, and a property test holds them to the same answers.

use std::time::Duration;

use breakwater_signal::UnixMillis;

/// Firing or resolved, as the sender said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Firing,
    Resolved,
}

/// One signal to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub fingerprint: String,
    pub status: Status,
}

/// What dedup keeps per open incident: fixed-size metadata, never payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub first_seen: UnixMillis,
    pub last_seen: UnixMillis,
    pub count: u64,
    /// Which CR counts this incident.
    pub placement: Placement,
}

/// Which CR counts an incident. A new incident is `Pending` until the edge
/// that saw its first alert knows whether a storm took it, so a repeat racing
/// that decision is counted on the right CR, never on both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Pending,
    /// The incident's own CR, named from fingerprint and `first_seen`.
    Own,
    /// Another CR (a storm's).
    Bound(Binding),
}

/// A CR an incident is counted on, other than its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// First firing in a window: a new incident.
    New,
    /// A repeat inside the open window.
    Duplicate,
    /// A resolution that closed an open window.
    Resolved,
    /// A resolution with no open window.
    ResolvedUnknown,
}

/// A decision and the record it concerns (none for `ResolvedUnknown`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub record: Option<Record>,
}

/// How the store must change after a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Record),
    Remove,
}

/// The dedup window: an incident stays open while alerts keep arriving less
/// than `window` apart.
#[derive(Debug, Clone, Copy)]
pub struct DedupWindow {
    window_ms: i64,
}

impl DedupWindow {
    pub fn new(window: Duration) -> Self {
        Self { window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1) }
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// Whether `record` still holds an open incident at `now`.
    pub fn is_open(&self, record: &Record, now: UnixMillis) -> bool {
        now.saturating_sub(record.last_seen) < self.window_ms
    }

    pub fn decide(&self, seen: Option<&Record>, status: Status, now: UnixMillis) -> (Verdict, Change) {
        let open = seen.filter(|r| self.is_open(r, now));
        match (status, open) {
            (Status::Firing, Some(r)) => {
                let next = Record { last_seen: r.last_seen.max(now), count: r.count + 1, ..r.clone() };
                (Verdict { decision: Decision::Duplicate, record: Some(next.clone()) }, Change::Put(next))
            }
            (Status::Firing, None) => {
                let next = Record { first_seen: now, last_seen: now, count: 1, placement: Placement::Pending };
                (Verdict { decision: Decision::New, record: Some(next.clone()) }, Change::Put(next))
            }
            (Status::Resolved, Some(r)) => {
                (Verdict { decision: Decision::Resolved, record: Some(r.clone()) }, Change::Remove)
            }
            (Status::Resolved, None) => (Verdict { decision: Decision::ResolvedUnknown, record: None }, Change::Remove),
        }
    }
}

#[cfg(test)]
mod tests;
