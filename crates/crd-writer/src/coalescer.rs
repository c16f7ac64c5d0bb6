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

use breakwater_embedded::{Namespace, Op};

use crate::crd::{self, CrRef, Write, WriteKind, signal_resource_id};
use crate::lifecycle::{Lifecycle, Verdict};
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
    /// `None` for an entry restored from the journal (only counts are journaled).
    first: Option<Write>,
}

/// How long a journaled entry may wait for its flush before it is dropped.
const JOURNAL_TTL_MS: i64 = 24 * 3600 * 1000;

/// What [`Coalescer::apply_to_latest`] did with counts whose CR does not exist.
enum Latest {
    /// They were applied to the incident's latest CR.
    Applied(Applied),
    /// Their CR is to be created, pointing at the incident's previous CR (its name).
    Create { previous: Option<String> },
}

enum Applied {
    Updated,
    Unchanged,
    Created,
    /// The CR vanished between create and update: try again next flush.
    Retry,
    /// The CR does not exist, and the entry cannot build it (restored from the journal, or
    /// made of writes with the signal's identity only).
    Gone,
}

pub struct Coalescer {
    sink: Arc<dyn RemediationSink>,
    clock: Arc<dyn Clock>,
    fallback_namespace: String,
    cap: usize,
    /// Per CR and dedup window (see [`CountUpdate::window_start`]): counts of two windows of
    /// one incident add up, so they must not merge by maximum.
    pending: Mutex<HashMap<(CrRef, UnixMillis), Pending>>,
    /// CRs that live elsewhere than the ref the edge uses: created in the fallback namespace,
    /// or the incident's open CR found under another name (see [`Coalescer::flush`]).
    relocated: Mutex<HashMap<CrRef, CrRef>>,
    /// Where pending counts survive a crash (see [`Coalescer::with_journal`]).
    journal: Option<Namespace>,
    /// Where an incident's counts go when their CR does not exist (see [`Lifecycle`]).
    lifecycle: Arc<Lifecycle>,
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
            journal: None,
            lifecycle: Arc::default(),
        }
    }

    /// Decides with `lifecycle` (its cooldown) instead of the default one.
    #[must_use]
    pub fn with_lifecycle(mut self, lifecycle: Arc<Lifecycle>) -> Self {
        self.lifecycle = lifecycle;
        self
    }

    /// The lifecycle decisions this coalescer makes, shared with the gRPC face.
    pub fn lifecycle(&self) -> Arc<Lifecycle> {
        Arc::clone(&self.lifecycle)
    }

    /// Keeps every pending entry in `journal` until it is flushed, and takes back the
    /// entries a previous process left there: counts answered `QUEUED` survive a crash
    /// (the journal is handed to the OS before `offer` returns). A restored entry whose
    /// CR no longer exists is dropped, as only counts are journaled.
    ///
    /// # Errors
    /// When the journal cannot be read.
    pub fn with_journal(mut self, journal: Namespace) -> Result<Self, breakwater_embedded::EmbeddedError> {
        let now = self.clock.now();
        let mut pending = lock(&self.pending);
        for (key, value) in journal.load_live(now)? {
            match (decode_key(&key), serde_json::from_slice::<CountUpdate>(&value)) {
                (Some(key), Ok(update)) => {
                    pending.insert(key, Pending { update, first: None });
                }
                _ => tracing::warn!(key = %String::from_utf8_lossy(&key), "skipping an unreadable journal entry"),
            }
        }
        if !pending.is_empty() {
            tracing::info!(entries = pending.len(), "count updates restored from the journal");
        }
        drop(pending);
        self.journal = Some(journal);
        Ok(self)
    }

    /// Queues the counts of `write` (any kind; a create's counts are its initial ones).
    pub fn offer(&self, write: Write) {
        self.offer_all([write]);
    }

    /// Queues the counts of `writes`, journaling them in one batch.
    pub fn offer_all(&self, writes: impl IntoIterator<Item = Write>) {
        let mut pending = lock(&self.pending);
        // Each entry is journaled once per call, however many of the writes it took: the
        // alerts of a storm's webhook all land on one entry, whose resource list is long.
        let mut touched = Vec::new();
        for write in writes {
            let update = count_update(&write);
            let key = (write.target.clone(), update.window_start);
            match pending.entry(key.clone()) {
                // A write with the signal's identity only cannot build the CR if it is missing.
                Entry::Occupied(mut entry) => {
                    let entry = entry.get_mut();
                    entry.update.merge(&update, self.cap);
                    if entry.first.is_none() && !write.identity_only {
                        entry.first = Some(write);
                    }
                }
                Entry::Vacant(entry) => {
                    entry.insert(Pending { update, first: (!write.identity_only).then_some(write) });
                }
            }
            touched.push(key);
        }
        touched.sort_unstable();
        touched.dedup();
        self.journal(&pending, &touched);
    }

    /// Writes the current state of `keys` to the journal (held under the pending lock, so
    /// the journal's order is the map's).
    fn journal(&self, pending: &HashMap<(CrRef, UnixMillis), Pending>, keys: &[(CrRef, UnixMillis)]) {
        let Some(journal) = &self.journal else { return };
        let expires_at = self.clock.now().saturating_add(JOURNAL_TTL_MS);
        let ops: Vec<Op> = keys
            .iter()
            .map(|key| match pending.get(key).map(|p| serde_json::to_vec(&p.update)) {
                Some(Ok(value)) => Op::Put { key: encode_key(key), value, expires_at },
                _ => Op::Remove { key: encode_key(key) },
            })
            .collect();
        if let Err(err) = journal.apply(&ops) {
            metrics::counter!("breakwater_crd_journal_errors_total").increment(1);
            tracing::error!(cause = %err, "count updates not journaled: a crash now would lose them");
        }
    }

    /// Number of CRs with counts waiting for a flush.
    pub fn pending_len(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Records that the CR the edge calls `target` lives in `namespace`, so its counts go there.
    pub fn note_placement(&self, target: &CrRef, namespace: &str) {
        self.note_relocation(target, &CrRef { namespace: namespace.to_owned(), name: target.name.clone() });
    }

    /// Records that the counts the edge sends to `target` belong on the CR `at`.
    fn note_relocation(&self, target: &CrRef, at: &CrRef) {
        if target == at {
            return;
        }
        let mut relocated = lock(&self.relocated);
        if relocated.len() >= MAX_RELOCATIONS {
            relocated.clear();
        }
        relocated.insert(target.clone(), at.clone());
    }

    pub(crate) fn placement(&self, target: &CrRef) -> CrRef {
        lock(&self.relocated).get(target).cloned().unwrap_or_else(|| target.clone())
    }

    /// Applies every pending entry once; failures stay pending.
    pub async fn flush(&self) -> FlushReport {
        let batch: Vec<((CrRef, UnixMillis), Pending)> = lock(&self.pending).drain().collect();
        let flushed: Vec<(CrRef, UnixMillis)> = batch.iter().map(|(key, _)| key.clone()).collect();
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
                Ok(Applied::Gone) => "gone",
                Err(err) => err.metric_label(),
            };
            metrics::counter!("breakwater_crd_flush_writes_total", "outcome" => outcome).increment(1);
            match result {
                Ok(Applied::Updated | Applied::Unchanged | Applied::Created) => report.applied += 1,
                Ok(Applied::Gone) => {
                    tracing::warn!(%target, lost = ?pending.update, "count update dropped: its CR no longer exists, and the update (restored from the journal, or with the signal's identity only) cannot build it");
                    report.dropped += 1;
                }
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
        // Flushed entries leave the journal; those pending again are journaled as they are now.
        self.journal(&lock(&self.pending), &flushed);
        report
    }

    async fn apply(&self, target: &CrRef, pending: &Pending) -> Result<Applied, SinkError> {
        let at = self.placement(target);
        match self.sink.update_counts(&at, &pending.update).await? {
            UpdateOutcome::Updated => return Ok(Applied::Updated),
            UpdateOutcome::Unchanged => return Ok(Applied::Unchanged),
            UpdateOutcome::NotFound => {}
        }
        if pending.update.is_resolution_only() {
            // The incident's CR was never written: nothing to mark.
            return Ok(Applied::Unchanged);
        }
        let previous = match self.apply_to_latest(target, &at, &pending.update).await? {
            Latest::Applied(applied) => return Ok(applied),
            Latest::Create { previous } => previous,
        };
        let Some(first) = &pending.first else { return Ok(Applied::Gone) };
        let mut rr = crd::build(first, self.clock.now(), &self.fallback_namespace);
        rr.spec.deduplication.previous_remediation_request_ref = previous;
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

    /// Counts of an incident whose CR `at` does not exist go where [`Lifecycle::decide`]
    /// says: to the incident's latest CR while it counts (open, or finished within the
    /// cooldown). That is a repeat that raced its window's first alert, which found that CR
    /// (see `CrdWriterGrpc::create_or_count`) after dedup had placed the window on a CR of its
    /// own name. Counts merge per window, so nothing counts twice. Otherwise the CR is
    /// created, pointing at the incident's `previous` CR.
    async fn apply_to_latest(&self, target: &CrRef, at: &CrRef, update: &CountUpdate) -> Result<Latest, SinkError> {
        if update.fingerprint.is_empty() {
            return Ok(Latest::Create { previous: None });
        }
        let namespace = if at.namespace.is_empty() { &self.fallback_namespace } else { &at.namespace };
        let latest = self.sink.find_latest(namespace, &update.fingerprint).await?;
        let counting = match self.lifecycle.decide(latest, self.clock.now()) {
            Verdict::CountOn { at: counting, .. } if counting != *at => counting,
            Verdict::CountOn { .. } => return Ok(Latest::Create { previous: None }),
            Verdict::Create { previous } => return Ok(Latest::Create { previous: previous.map(|p| p.name) }),
        };
        let applied = match self.sink.update_counts(&counting, update).await? {
            UpdateOutcome::Updated => Applied::Updated,
            UpdateOutcome::Unchanged => Applied::Unchanged,
            UpdateOutcome::NotFound => return Ok(Latest::Create { previous: None }),
        };
        self.note_relocation(target, &counting);
        Ok(Latest::Applied(applied))
    }

    /// Puts a failed entry back, merged with anything that arrived since it was taken.
    fn requeue(&self, key: (CrRef, UnixMillis), failed: Pending) {
        let mut pending = lock(&self.pending);
        match pending.entry(key) {
            Entry::Occupied(mut entry) => {
                let newer = entry.get_mut();
                newer.update.merge(&failed.update, self.cap);
                newer.first = failed.first.or(newer.first.take());
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
    if write.kind.is_resolution() {
        return CountUpdate {
            resolved_at: last_seen,
            fingerprint: write.signal.fingerprint.clone(),
            ..CountUpdate::default()
        };
    }
    // A storm CR counts many fingerprints: only its managed-by label is checked.
    if write.storm.is_none() {
        update.fingerprint.clone_from(&write.signal.fingerprint);
    }
    update
}

/// `<namespace>/<name>/<window start>`: namespaces and names are DNS-1123 labels, without '/'.
fn encode_key((target, window): &(CrRef, UnixMillis)) -> Vec<u8> {
    format!("{}/{}/{window}", target.namespace, target.name).into_bytes()
}

fn decode_key(key: &[u8]) -> Option<(CrRef, UnixMillis)> {
    let key = std::str::from_utf8(key).ok()?;
    let mut parts = key.splitn(3, '/');
    let (namespace, name, window) = (parts.next()?, parts.next()?, parts.next()?);
    Some((CrRef { namespace: namespace.to_owned(), name: name.to_owned() }, window.parse().ok()?))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent at every await-free step, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
