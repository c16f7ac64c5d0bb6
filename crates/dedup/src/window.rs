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
    /// Identifies this delivery of the signal (see [`DeliveryKey`]); `None`
    /// when the sender gave it no identity, so every delivery counts.
    pub delivery: Option<DeliveryKey>,
}

/// Identifies one delivery of one alert, whoever delivers it: a sender's retry
/// and another Alertmanager peer's copy carry the same key. Fixed size (128
/// bits of a hash), so remembering one costs the same whatever the alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryKey(pub u128);

impl DeliveryKey {
    /// Parses the 32 lower-case hex characters the edge sends.
    pub fn parse(hex: &str) -> Option<Self> {
        breakwater_signal::parse_delivery_key(hex).map(Self)
    }

    /// The 32 lower-case hex characters, as in Redis keys.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

/// What dedup keeps per open incident: fixed-size metadata, never payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub first_seen: UnixMillis,
    pub last_seen: UnixMillis,
    pub count: u64,
    /// Which CR counts this incident.
    pub placement: Placement,
    /// When the window ends whatever alerts still arrive: its CR was finished, and the
    /// cooldown after that ends here (crd-writer says so once it sees the finish).
    pub ends_at: Option<UnixMillis>,
}

impl Record {
    /// The record's text form, `<first_seen>|<last_seen>|<count>|<placement>`, then
    /// `|<ends_at>` when the window has an end (what the embedded store keeps on disk, and
    /// the form `store/check.lua` replies in).
    pub fn encode(&self) -> String {
        let (first, last, count, placement) = (self.first_seen, self.last_seen, self.count, self.placement.encode());
        match self.ends_at {
            Some(ends_at) => format!("{first}|{last}|{count}|{placement}|{ends_at}"),
            None => format!("{first}|{last}|{count}|{placement}"),
        }
    }

    /// Parses [`Record::encode`]'s form; `None` for anything else.
    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.splitn(5, '|');
        let first_seen = parts.next()?.parse().ok()?;
        let last_seen = parts.next()?.parse().ok()?;
        let count = parts.next()?.parse().ok()?;
        let placement = match parts.next()? {
            "?" => Placement::Pending,
            "" => Placement::Own,
            bound => {
                let (namespace, name) = bound.split_once('/')?;
                Placement::Bound(Binding { namespace: namespace.to_owned(), name: name.to_owned() })
            }
        };
        let ends_at = match parts.next() {
            Some(ends_at) => Some(ends_at.parse().ok()?),
            None => None,
        };
        Some(Self { first_seen, last_seen, count, placement, ends_at })
    }
}

impl Placement {
    /// `?` pending, empty for the own CR, or `namespace/name`.
    pub fn encode(&self) -> String {
        match self {
            Placement::Pending => "?".to_owned(),
            Placement::Own => String::new(),
            Placement::Bound(b) => format!("{}/{}", b.namespace, b.name),
        }
    }
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
    /// A copy of a delivery already counted within the copy window: nothing changes.
    Copy,
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
///
/// Deliveries (see [`DeliveryKey`]) are remembered for the copy window, so a
/// copy arriving within it counts once.
#[derive(Debug, Clone, Copy)]
pub struct DedupWindow {
    window_ms: i64,
    copy_window_ms: i64,
}

/// How long a delivery is remembered unless configured: shorter than
/// Alertmanager's default `group_interval` (5 min), so a re-notification
/// counts again, and longer than its retries of one notification take.
pub const DEFAULT_COPY_WINDOW: Duration = Duration::from_secs(120);

impl DedupWindow {
    pub fn new(window: Duration) -> Self {
        Self { window_ms: millis(window), copy_window_ms: millis(DEFAULT_COPY_WINDOW) }
    }

    /// Remembers deliveries for `copy_window` instead of [`DEFAULT_COPY_WINDOW`].
    #[must_use]
    pub fn with_copy_window(self, copy_window: Duration) -> Self {
        Self { copy_window_ms: millis(copy_window), ..self }
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    pub fn copy_window_ms(&self) -> i64 {
        self.copy_window_ms
    }

    /// The verdict for a delivery seen before: where the first was counted,
    /// if its incident is still open. Nothing changes.
    pub fn copy_of(&self, seen: Option<&Record>, now: UnixMillis) -> Verdict {
        Verdict { decision: Decision::Copy, record: seen.filter(|r| self.is_open(r, now)).cloned() }
    }

    /// Whether `record` still holds an open incident at `now`: its last alert is less
    /// than a window old, and its end (if it has one) has not come.
    pub fn is_open(&self, record: &Record, now: UnixMillis) -> bool {
        now.saturating_sub(record.last_seen) < self.window_ms && record.ends_at.is_none_or(|end| now < end)
    }

    pub fn decide(&self, seen: Option<&Record>, status: Status, now: UnixMillis) -> (Verdict, Change) {
        let open = seen.filter(|r| self.is_open(r, now));
        match (status, open) {
            (Status::Firing, Some(r)) => {
                let next = Record { last_seen: r.last_seen.max(now), count: r.count + 1, ..r.clone() };
                (Verdict { decision: Decision::Duplicate, record: Some(next.clone()) }, Change::Put(next))
            }
            (Status::Firing, None) => {
                let next =
                    Record { first_seen: now, last_seen: now, count: 1, placement: Placement::Pending, ends_at: None };
                (Verdict { decision: Decision::New, record: Some(next.clone()) }, Change::Put(next))
            }
            (Status::Resolved, Some(r)) => {
                (Verdict { decision: Decision::Resolved, record: Some(r.clone()) }, Change::Remove)
            }
            (Status::Resolved, None) => (Verdict { decision: Decision::ResolvedUnknown, record: None }, Change::Remove),
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

#[cfg(test)]
mod tests;
