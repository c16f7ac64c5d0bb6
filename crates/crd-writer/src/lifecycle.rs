//! An incident's life follows its CR: where the incident's next alert counts, from the
//! latest CR of its fingerprint and that CR's phase. The pure decision behind every create
//! (`CrdWriterGrpc::create_or_count`) and behind counts whose CR does not exist (the
//! coalescer's flush).
//!
//! - No CR: a new one.
//! - An open CR (no terminal `status.overallPhase`, not resolved since its last occurrence):
//!   the alert counts on it, however long ago dedup's window for it closed.
//! - A CR the remediation controller finished (`Completed`, `Failed`, `Cancelled`,
//!   `Timeout`): the alert counts on it, as arriving after completion, until either the
//!   incident was resolved after the CR finished, or the cooldown has passed since it
//!   finished; then a new CR, pointing at the finished one. Without the cooldown an alert
//!   that keeps firing after a remediation that changed nothing would open CR after CR.
//! - A CR resolved since its last occurrence (not finished): a new CR, pointing at it.
//!
//! A CR finished says when in `status.completedAt`; one that does not (a phase set by hand
//! in a file) is taken as finished when crd-writer first saw it so.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use breakwater_signal::UnixMillis;

use crate::crd::CrRef;
use crate::sink::{CrPhase, LatestCr};

/// The cooldown unless configured: the default dedup window, 5 minutes.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(300);

/// Finished CRs without `completedAt` remembered at most; past this the memo starts over
/// (their cooldowns then count from when they are seen again).
const MAX_FINISHED_SEEN: usize = 65_536;

/// Where an incident's next firing alert goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Count it on `at`; `after_completion` when `at` is finished (within the cooldown).
    CountOn { at: CrRef, after_completion: bool },
    /// Open a new CR; `previous` is the incident's latest CR, if any.
    Create { previous: Option<CrRef> },
}

#[derive(Debug)]
pub struct Lifecycle {
    cooldown_ms: i64,
    /// When crd-writer first saw each finished CR that gives no `completedAt`.
    finished_seen: Mutex<HashMap<CrRef, UnixMillis>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new(DEFAULT_COOLDOWN)
    }
}

impl Lifecycle {
    /// `cooldown`: how long after a CR finished its incident's alerts still count on it.
    pub fn new(cooldown: Duration) -> Self {
        let cooldown_ms = i64::try_from(cooldown.as_millis()).unwrap_or(i64::MAX);
        Self { cooldown_ms, finished_seen: Mutex::new(HashMap::new()) }
    }

    pub fn cooldown_ms(&self) -> i64 {
        self.cooldown_ms
    }

    /// Where a firing alert of the incident whose latest CR is `latest` goes at `now`.
    pub fn decide(&self, latest: Option<LatestCr>, now: UnixMillis) -> Verdict {
        let Some(LatestCr { at, phase }) = latest else { return Verdict::Create { previous: None } };
        match phase {
            CrPhase::Open => Verdict::CountOn { at, after_completion: false },
            CrPhase::Resolved => Verdict::Create { previous: Some(at) },
            CrPhase::Finished { completed_at, resolved_at } => {
                let finished_at = completed_at.unwrap_or_else(|| self.first_seen_finished(&at, now));
                let resolved_after = resolved_at.is_some_and(|r| r > finished_at);
                if resolved_after || now.saturating_sub(finished_at) >= self.cooldown_ms {
                    Verdict::Create { previous: Some(at) }
                } else {
                    Verdict::CountOn { at, after_completion: true }
                }
            }
        }
    }

    /// When dedup's window of an incident counted on the CR `at` should end, given the
    /// CR's `phase`: once it is finished, when the cooldown after the finish ends (at once
    /// if the incident was resolved after it finished), so the first alert after that is a
    /// new window, which [`Lifecycle::decide`] gives a new CR. `None` while it is not
    /// finished.
    pub fn window_end(&self, at: &CrRef, phase: CrPhase, now: UnixMillis) -> Option<UnixMillis> {
        let CrPhase::Finished { completed_at, resolved_at } = phase else { return None };
        let finished_at = completed_at.unwrap_or_else(|| self.first_seen_finished(at, now));
        match resolved_at {
            // Resolved after the finish: the window was over then.
            Some(resolved_at) if resolved_at > finished_at => Some(resolved_at),
            _ => Some(finished_at.saturating_add(self.cooldown_ms)),
        }
    }

    fn first_seen_finished(&self, at: &CrRef, now: UnixMillis) -> UnixMillis {
        // Each change is one insert or a clear: a poisoned map is still sound.
        let mut seen = self.finished_seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= MAX_FINISHED_SEEN && !seen.contains_key(at) {
            seen.clear();
        }
        *seen.entry(at.clone()).or_insert(now)
    }
}

#[cfg(test)]
mod tests;
