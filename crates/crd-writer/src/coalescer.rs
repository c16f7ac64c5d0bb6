//! Coalescing of count writes: a burst of duplicates costs one Kubernetes write per flush.
//!
//! `OCCURRENCE` and `STORM_ADD` writes are answered `QUEUED` at once and merged into a pending
//! entry per CR (maxima of the counts, union of the listed resources, see
//! [`CountUpdate::merge`]). [`Coalescer::flush`] applies the entries; the flusher calls it every
//! `flush_interval_ms` and `run` once more at shutdown. An entry whose write fails stays
//! pending and merges with what arrives meanwhile, so no count is lost to a failed flush; only
//! a write the sink refuses for good (an invalid object) is dropped, with an error log.
//!
//! An entry also keeps the first write that made it, so a CR that does not exist yet (its
//! create failed and the sender's retry was deduplicated) is created from the entry with the
//! right counts.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tracing::Instrument as _;

use breakwater_signal::{Clock, UnixMillis};
use futures::StreamExt;
use tokio::time::MissedTickBehavior;

use crate::crd::{self, CrRef, Write, WriteKind, signal_resource_id};
use crate::sink::{BATCH_CONCURRENCY, CountUpdate, CreateOutcome, RemediationSink, SinkError, UpdateOutcome};

/// Relocation memos kept at most; past this the memo starts over (it is only a shortcut).
const MAX_RELOCATIONS: usize = 10_000;
/// Pause between rounds of the final flush while some entries keep failing.
const FINAL_FLUSH_PAUSE: Duration = Duration::from_millis(200);

/// Counts of one flush.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Entries that reached their CR (updated, already current, or created).
    pub applied: usize,
    /// Entries kept pending for the next flush.
    pub requeued: usize,
    /// Entries the sink refused for good (see [`SinkError::is_permanent`]).
    pub dropped: usize,
}

#[derive(Debug)]
struct Pending {
    update: CountUpdate,
    /// The oldest write of the entry: what the CR is built from if it must be created.
    first: Write,
}

enum Applied {
    Updated,
    Unchanged,
    Created,
    /// The CR vanished between create and update: try again next flush.
    Retry,
}

pub struct Coalescer {
    sink: Arc<dyn RemediationSink>,
    clock: Arc<dyn Clock>,
    fallback_namespace: String,
    cap: usize,
    /// Per CR and dedup window (see [`CountUpdate::window_start`]): counts of two windows of
    /// one incident add up, so they must not merge by maximum.
    pending: Mutex<HashMap<(CrRef, UnixMillis), Pending>>,
    /// CRs that were created in the fallback namespace, by the ref the edge uses.
    relocated: Mutex<HashMap<CrRef, String>>,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").field("pending", &self.pending_len()).finish_non_exhaustive()
    }
}

impl Coalescer {
    /// `cap` bounds `affectedResources` as the sinks do; `fallback_namespace` is where CRs of
    /// cluster-scoped signals are created.
    pub fn new(
        sink: Arc<dyn RemediationSink>,
        clock: Arc<dyn Clock>,
        fallback_namespace: impl Into<String>,
        cap: usize,
    ) -> Self {
        Self {
            sink,
            clock,
            fallback_namespace: fallback_namespace.into(),
            cap,
            pending: Mutex::new(HashMap::new()),
            relocated: Mutex::new(HashMap::new()),
        }
    }

    /// Queues the counts of `write` (any kind; a create's counts are its initial ones).
    pub fn offer(&self, write: Write) {
        let update = count_update(&write);
        let mut pending = lock(&self.pending);
        match pending.entry((write.target.clone(), update.window_start)) {
            Entry::Occupied(mut entry) => entry.get_mut().update.merge(&update, self.cap),
            Entry::Vacant(entry) => {
                entry.insert(Pending { update, first: write });
            }
        }
    }

    /// Number of CRs with counts waiting for a flush.
    pub fn pending_len(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Records that the CR the edge calls `target` lives in `namespace`, so its counts go there.
    pub fn note_placement(&self, target: &CrRef, namespace: &str) {
        if target.namespace == namespace {
            return;
        }
        let mut relocated = lock(&self.relocated);
        if relocated.len() >= MAX_RELOCATIONS {
            relocated.clear();
        }
        relocated.insert(target.clone(), namespace.to_owned());
    }

    fn placement(&self, target: &CrRef) -> CrRef {
        match lock(&self.relocated).get(target) {
            Some(namespace) => CrRef { namespace: namespace.clone(), name: target.name.clone() },
            None => target.clone(),
        }
    }

    /// Applies every pending entry once; failures stay pending.
    pub async fn flush(&self) -> FlushReport {
        let batch: Vec<((CrRef, UnixMillis), Pending)> = lock(&self.pending).drain().collect();
        if batch.is_empty() {
            return FlushReport::default();
        }
        // Its own trace: one flush carries the counts of many alerts' traces.
        let span = tracing::info_span!(
            "crd.flush",
            otel.kind = "internal",
            breakwater.component = "crd-writer",
            remediations = batch.len()
        );
        let results: Vec<_> = futures::stream::iter(batch)
            .map(|(key, pending)| async move {
                let result = self.apply(&key.0, &pending).await;
                (key, pending, result)
            })
            .buffer_unordered(BATCH_CONCURRENCY)
            .collect()
            .instrument(span)
            .await;
        let mut report = FlushReport::default();
        for (key, pending, result) in results {
            let target = key.0.clone();
            let outcome = match &result {
                Ok(Applied::Updated) => "updated",
                Ok(Applied::Unchanged) => "unchanged",
                Ok(Applied::Created) => "created",
                Ok(Applied::Retry) => "retry",
                Err(err) => err.metric_label(),
            };
            metrics::counter!("breakwater_crd_flush_writes_total", "outcome" => outcome).increment(1);
            match result {
                Ok(Applied::Updated | Applied::Unchanged | Applied::Created) => report.applied += 1,
                Ok(Applied::Retry) => {
                    report.requeued += 1;
                    self.requeue(key, pending);
                }
                Err(err) if err.is_permanent() => {
                    tracing::error!(%target, cause = %err, lost = ?pending.update, "count update refused for good, dropped");
                    report.dropped += 1;
                }
                Err(err) => {
                    tracing::warn!(%target, cause = %err, "count update failed, kept for the next flush");
                    report.requeued += 1;
                    self.requeue(key, pending);
                }
            }
        }
        report
    }

    async fn apply(&self, target: &CrRef, pending: &Pending) -> Result<Applied, SinkError> {
        let at = self.placement(target);
        match self.sink.update_counts(&at, &pending.update).await? {
            UpdateOutcome::Updated => return Ok(Applied::Updated),
            UpdateOutcome::Unchanged => return Ok(Applied::Unchanged),
            UpdateOutcome::NotFound => {}
        }
        let mut rr = crd::build(&pending.first, self.clock.now(), &self.fallback_namespace);
        pending.update.apply_to(&mut rr.spec, self.cap);
        let created = self.sink.create(&rr).await?;
        self.note_placement(target, &created.namespace);
        if created.outcome == CreateOutcome::Created {
            return Ok(Applied::Created);
        }
        // Someone created it meanwhile (or it sits in the fallback namespace): merge into it.
        let at = CrRef { namespace: created.namespace, name: target.name.clone() };
        Ok(match self.sink.update_counts(&at, &pending.update).await? {
            UpdateOutcome::Updated => Applied::Updated,
            UpdateOutcome::Unchanged => Applied::Unchanged,
            UpdateOutcome::NotFound => Applied::Retry,
        })
    }

    /// Puts a failed entry back, merged with anything that arrived since it was taken.
    fn requeue(&self, key: (CrRef, UnixMillis), failed: Pending) {
        let mut pending = lock(&self.pending);
        match pending.entry(key) {
            Entry::Occupied(mut entry) => {
                let newer = entry.get_mut();
                newer.update.merge(&failed.update, self.cap);
                newer.first = failed.first;
            }
            Entry::Vacant(entry) => {
                entry.insert(failed);
            }
        }
    }

    /// Flushes every `interval` until `stop` resolves. The final flush is separate
    /// ([`Coalescer::final_flush`]) so it can run after the server stopped taking writes.
    pub async fn run_until(&self, interval: Duration, stop: impl Future<Output = ()>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker.tick().await;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = ticker.tick() => {
                    self.flush().await;
                }
            }
        }
    }

    /// Flushes until nothing is pending or `timeout` passes; returns how many entries are
    /// still pending (and so lost when the process exits).
    pub async fn final_flush(&self, timeout: Duration) -> usize {
        let drained = tokio::time::timeout(timeout, async {
            while self.flush().await.requeued > 0 {
                tokio::time::sleep(FINAL_FLUSH_PAUSE).await;
            }
        })
        .await;
        let left = self.pending_len();
        if drained.is_err() {
            tracing::error!(
                pending = left,
                timeout_ms = timeout.as_millis(),
                "final flush did not complete; these CRs miss their latest counts"
            );
        }
        left
    }
}

/// The counts a write carries. Storm adds list their resource when the storm service says so.
pub fn count_update(write: &Write) -> CountUpdate {
    let last_seen = if write.last_seen > 0 { write.last_seen } else { write.signal.received_time_unix_ms.max(0) };
    let mut update = CountUpdate {
        occurrence_count: write.occurrence_count,
        window_start: write.first_seen.max(0),
        last_seen,
        ..CountUpdate::default()
    };
    if let Some(storm) = &write.storm {
        update.storm_alert_count = storm.alert_count;
        update.affected_resources_omitted = storm.resources_omitted;
        if storm.resource_listed {
            update.affected_resources.push(signal_resource_id(&write.signal));
        }
        if write.kind == WriteKind::StormAdd {
            // A storm add is not an occurrence of the storm CR's own incident.
            update.occurrence_count = 0;
        }
        update.window_start = 0;
    }
    update
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent at every await-free step, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
