//! crd-writer's service logic, between its gRPC face and its sink: which writes are applied
//! before the answer and which are queued on the [`Coalescer`], the lookup of an open CR
//! before every create ([`Writer::create_or_count`]), the check that a count goes to a CR of
//! its incident, and the answer for each write. The face checks and converts messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use breakwater_signal::{Clock, UnixMillis};
use futures::StreamExt;

use crate::coalescer::{Coalescer, count_update};
use crate::crd::{self, CrRef, RemediationRequest, Write, WriteKind};
use crate::lifecycle::{Lifecycle, Verdict};
use crate::sink::{
    BATCH_CONCURRENCY, CrPhase, CreateOutcome, Created, RemediationSink, SinkError, UpdateOutcome, check_owned,
};

/// Suggested pause before retrying a failed create when Kubernetes did not ask for one.
pub(crate) const DEFAULT_RETRY_AFTER_MS: u64 = 1000;

/// Applies the writes of crd-writer's callers.
pub struct Writer {
    sink: Arc<dyn RemediationSink>,
    coalescer: Arc<Coalescer>,
    clock: Arc<dyn Clock>,
    fallback_namespace: String,
    /// CRs known to be crd-writer's, and whose: checked before counts are accepted for them.
    owned: OwnedCrs,
    /// Where a create's alert goes, from its incident's latest CR (shared with the coalescer).
    lifecycle: Arc<Lifecycle>,
}

/// One write of a call, read.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub write: Write,
    /// How a `CREATE` counts on an open CR it finds: dedup vouched the incident is new, or
    /// dedup was down.
    pub last_resort: LastResort,
    /// A `STORM_ADD` the storm service could not count: crd-writer adds it to the CR.
    pub storm_unavailable: bool,
}

/// What became of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub outcome: Outcome,
    /// The CR it went to, where it really is (crd-writer may have used its fallback namespace).
    pub at: Option<CrRef>,
    /// The CR is finished: the incident's dedup window should end then.
    pub window_ends: Option<UnixMillis>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    AlreadyExisted,
    /// Queued on the coalescer, or applied at once.
    Queued,
    NothingToDo,
    /// Not applied; `error` is a stable cause for the client.
    Failed {
        error: String,
        retry_after_ms: u64,
    },
}

/// A write aimed at a CR that is not its incident's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotOwned {
    pub index: usize,
    pub why: &'static str,
}

impl Answer {
    fn new(outcome: Outcome, at: Option<CrRef>) -> Self {
        Self { outcome, at, window_ends: None }
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("fallback_namespace", &self.fallback_namespace).finish_non_exhaustive()
    }
}

impl Writer {
    /// CRs of cluster-scoped signals, and of writes without a namespace, go to `fallback_namespace`.
    pub fn new(
        sink: Arc<dyn RemediationSink>,
        coalescer: Arc<Coalescer>,
        clock: Arc<dyn Clock>,
        fallback_namespace: String,
    ) -> Self {
        Self {
            sink,
            clock,
            fallback_namespace,
            owned: OwnedCrs::default(),
            lifecycle: coalescer.lifecycle(),
            coalescer,
        }
    }

    /// Where CRs without a namespace go.
    pub fn fallback_namespace(&self) -> &str {
        &self.fallback_namespace
    }

    /// Refuses counts and resolutions for an existing CR that is not crd-writer's, or is
    /// another incident's: `uses` are (write index, target CR, the incident's fingerprint, or
    /// empty for any incident: a storm CR). A CR that does not exist (yet) is fine:
    /// crd-writer creates it. A CR that cannot be read now is let through: the sink checks
    /// again before it writes.
    ///
    /// # Errors
    /// The first write aimed at a CR that is not its incident's, and why.
    pub async fn check_owners(&self, uses: Vec<(usize, CrRef, String)>) -> Result<(), NotOwned> {
        let mut unknown: HashMap<CrRef, Vec<(usize, String)>> = HashMap::new();
        for (i, mut target, fingerprint) in uses {
            if target.namespace.is_empty() {
                target.namespace.clone_from(&self.fallback_namespace);
            }
            let at = self.coalescer.placement(&target);
            match self.owned.get(&at) {
                Some(owner) if owner.takes(&fingerprint) => {}
                Some(_) => {
                    return Err(NotOwned { index: i, why: "it is another incident's (its fingerprint differs)" });
                }
                None => unknown.entry(at).or_default().push((i, fingerprint)),
            }
        }
        let reads: Vec<_> = unknown.keys().map(|at| self.sink.get(at)).collect();
        let found: Vec<_> = futures::stream::iter(reads).buffered(BATCH_CONCURRENCY).collect().await;
        for ((at, uses), found) in unknown.into_iter().zip(found) {
            let rr = match found {
                Ok(Some(rr)) => rr,
                Ok(None) => continue,
                Err(err) => {
                    tracing::debug!(target = %at, cause = %err, "cannot read the CR to check it now; the sink checks it");
                    continue;
                }
            };
            for (i, fingerprint) in &uses {
                if let Err(SinkError::Foreign { why, .. }) = check_owned(&rr, &at, fingerprint) {
                    return Err(NotOwned { index: *i, why });
                }
            }
            let owner = Owner { fingerprint: rr.spec.signal_fingerprint.clone(), storm: rr.spec.is_storm };
            self.owned.insert(at, owner);
        }
        Ok(())
    }

    /// Applies `writes`: one answer per write, in order.
    pub async fn apply(&self, writes: Vec<Incoming>) -> Vec<Answer> {
        let now = self.clock.now();
        let mut results: Vec<Option<Answer>> = vec![None; writes.len()];
        let mut creates: Vec<(usize, Write)> = Vec::new();
        let mut rrs = Vec::new();
        let mut fallbacks: Vec<(usize, Write, RemediationRequest, LastResort)> = Vec::new();
        let mut immediate: Vec<(usize, Write)> = Vec::new();
        let mut late: Vec<(usize, Write)> = Vec::new();
        let mut queued: Vec<Write> = Vec::new();
        for (index, Incoming { write, last_resort: count, storm_unavailable }) in writes.into_iter().enumerate() {
            match write {
                // Every create looks for an open CR of its incident first (see `create_or_count`).
                write if write.kind == WriteKind::Create => {
                    let rr = crd::build(&write, now, &self.fallback_namespace);
                    fallbacks.push((index, write, rr, count));
                }
                write if write.kind.is_create() => {
                    rrs.push(crd::build(&write, now, &self.fallback_namespace));
                    creates.push((index, write));
                }
                write if write.kind == WriteKind::StormAdd && storm_unavailable => immediate.push((index, write)),
                // Applied before answering: the incident's next firing must find it closed.
                write if write.kind == WriteKind::Resolution => immediate.push((index, write)),
                write if write.kind == WriteKind::LateResolution => late.push((index, write)),
                write => {
                    record(write.kind.as_str(), "queued");
                    let mut answer = Answer::new(Outcome::Queued, Some(write.target.clone()));
                    if write.kind == WriteKind::Occurrence {
                        answer.window_ends = self.window_end(&write, now);
                    }
                    results[index] = Some(answer);
                    queued.push(write);
                }
            }
        }

        let fallback_calls: Vec<_> =
            fallbacks.iter().map(|(_, write, rr, count)| self.create_or_count(write, rr, *count)).collect();
        // Journaled in one batch before anything is answered.
        self.coalescer.offer_all(queued);
        let carry_calls: Vec<_> = immediate.iter().map(|(_, write)| self.apply_now(write)).collect();
        let late_calls: Vec<_> = late.iter().map(|(_, write)| self.resolve_latest(write)).collect();
        let (outcomes, fallback_outcomes, carry_outcomes, late_outcomes) = futures::join!(
            self.sink.create_batch(&rrs),
            futures::stream::iter(fallback_calls).buffered(BATCH_CONCURRENCY).collect::<Vec<_>>(),
            futures::stream::iter(carry_calls).buffered(BATCH_CONCURRENCY).collect::<Vec<_>>(),
            futures::stream::iter(late_calls).buffered(BATCH_CONCURRENCY).collect::<Vec<_>>(),
        );
        for ((index, write), outcome) in late.into_iter().zip(late_outcomes) {
            results[index] = Some(match outcome {
                Ok(Some(at)) => {
                    record(write.kind.as_str(), "applied");
                    Answer::new(Outcome::Queued, Some(at))
                }
                Ok(None) => {
                    record(write.kind.as_str(), "nothing_to_do");
                    Answer::new(Outcome::NothingToDo, None)
                }
                Err(err) => answer_failed(&write, &err),
            });
        }
        for ((index, write), outcome) in immediate.into_iter().zip(carry_outcomes) {
            results[index] = Some(match outcome {
                Ok(()) => {
                    record(
                        write.kind.as_str(),
                        if write.kind == WriteKind::Resolution { "applied" } else { "carried" },
                    );
                    Answer::new(Outcome::Queued, Some(write.target.clone()))
                }
                Err(err) => answer_failed(&write, &err),
            });
        }
        for ((index, write), outcome) in creates.into_iter().zip(outcomes) {
            results[index] = Some(match outcome {
                Ok(created) => self.answer_created(write, created),
                Err(err) => answer_failed(&write, &err),
            });
        }
        for ((index, write, _, count), outcome) in fallbacks.into_iter().zip(fallback_outcomes) {
            let (label, answer) = match outcome {
                Ok(Fallback::Counted { at, on_open, window_ends }) => {
                    record(write.kind.as_str(), "already_existed");
                    let label = if on_open { "counted_on_open" } else { "counted_on_existing" };
                    let mut answer = Answer::new(Outcome::AlreadyExisted, Some(at));
                    answer.window_ends = window_ends;
                    (label, answer)
                }
                Ok(Fallback::Created(created)) => {
                    let label = match created.outcome {
                        CreateOutcome::Created => "created",
                        // Its CR vanished between AlreadyExists and the count: answered as usual.
                        CreateOutcome::AlreadyExisted => "already_existed",
                    };
                    (label, self.answer_created(write, created))
                }
                Err(err) => ("failed", answer_failed(&write, &err)),
            };
            if count != LastResort::Vouched {
                metrics::counter!("breakwater_crd_dedup_fallback_total", "outcome" => label).increment(1);
            }
            results[index] = Some(answer);
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Answer::new(Outcome::NothingToDo, None))).collect()
    }

    /// Every `CREATE` of an incident: an incident whose CR is still open keeps it, whatever
    /// dedup's windows say. Dedup names a CR per window, so an incident open longer than one
    /// (its CR not finished, alerts more than a window apart) or opened before dedup lost its
    /// state (dedup was unavailable, or restarted) already has a CR under another name. So
    /// the latest CR of its fingerprint in the CR's namespace is looked up
    /// ([`RemediationSink::find_latest`], an index lookup) and [`Lifecycle::decide`] says
    /// where the alert goes: on that CR while it is open, or finished within the cooldown
    /// (marked as after completion); otherwise the CR is created, pointing at the previous
    /// one. The edge then binds dedup's window to a CR found, so the window's repeats go
    /// straight there.
    ///
    /// When dedup vouched for the window ([`LastResort::Vouched`]), a CR of the create's own
    /// name is the window's own (a racing repeat created it first) and is answered as
    /// usual. Otherwise a create that runs into an existing CR of its name (another fallback
    /// create of the same incident won the race, or a sender retry) counts there too: without
    /// dedup every alert is an occurrence, wherever it is counted. A failed lookup other than
    /// an unavailable API (say, no RBAC to list) does not fail the alert; it is created as
    /// usual, and Kubernetes' AlreadyExists on the window name still keeps duplicates out.
    async fn create_or_count(
        &self,
        write: &Write,
        rr: &RemediationRequest,
        count: LastResort,
    ) -> Result<Fallback, SinkError> {
        let namespace = rr.metadata.namespace.as_deref().unwrap_or_default();
        let own = |open: &CrRef| open.name == write.target.name;
        let mut previous = None;
        let now = self.clock.now();
        match self.sink.find_latest(namespace, &write.signal.fingerprint).await {
            Ok(latest) => match (latest.as_ref().map(|l| l.phase), self.lifecycle.decide(latest, now)) {
                (phase, Verdict::CountOn { at, after_completion }) if !(count == LastResort::Vouched && own(&at)) => {
                    match self.count_on(&at, write, count).await? {
                        UpdateOutcome::Updated | UpdateOutcome::Unchanged => {
                            let mut window_ends = None;
                            if after_completion {
                                tracing::debug!(%at, "counted on a finished CR, within the cooldown");
                                window_ends = phase.and_then(|phase| self.lifecycle.window_end(&at, phase, now));
                            }
                            return Ok(Fallback::Counted { at, on_open: true, window_ends });
                        }
                        // Deleted since the lookup: create as usual.
                        UpdateOutcome::NotFound => {}
                    }
                }
                (_, Verdict::CountOn { .. }) => {}
                (_, Verdict::Create { previous: latest }) => previous = latest,
            },
            Err(err @ SinkError::Unavailable { .. }) => return Err(err),
            Err(err) => {
                tracing::warn!(target = %write.target, cause = %err, "looking up an open CR failed, creating as usual");
            }
        }
        let linked;
        let rr = match previous {
            Some(previous) => {
                let mut rr = rr.clone();
                rr.spec.deduplication.previous_remediation_request_ref = Some(previous.name);
                linked = rr;
                &linked
            }
            None => rr,
        };
        let created = self.sink.create(rr).await?;
        if created.outcome == CreateOutcome::AlreadyExisted && count != LastResort::Vouched {
            let at = CrRef { namespace: created.namespace.clone(), name: write.target.name.clone() };
            if self.count_on(&at, write, count).await? != UpdateOutcome::NotFound {
                self.coalescer.note_placement(&write.target, &created.namespace);
                return Ok(Fallback::Counted { at, on_open: false, window_ends: None });
            }
        }
        Ok(Fallback::Created(created))
    }

    /// When the dedup window of a repeat should end: its CR is finished (as the sink knows
    /// without a request), so the cooldown after the finish ends the window, and the first
    /// alert after it opens a new CR. The edge passes it on to dedup once per window.
    fn window_end(&self, write: &Write, now: UnixMillis) -> Option<UnixMillis> {
        let at = self.coalescer.placement(&write.target);
        let phase = self.sink.known_phase(&at, &write.signal.fingerprint)?;
        self.lifecycle.window_end(&at, phase, now)
    }

    /// Records a resolution of an incident dedup no longer held on its latest CR in the
    /// target's namespace, unless it has none or that CR is resolved already: so a finished
    /// CR knows its incident was resolved after it finished ([`Lifecycle::decide`]), and an
    /// open one that the next firing is another incident. Which CR, if any.
    async fn resolve_latest(&self, write: &Write) -> Result<Option<CrRef>, SinkError> {
        let namespace =
            if write.target.namespace.is_empty() { &self.fallback_namespace } else { &write.target.namespace };
        let Some(latest) = self.sink.find_latest(namespace, &write.signal.fingerprint).await? else {
            return Ok(None);
        };
        if latest.phase == CrPhase::Resolved {
            return Ok(None);
        }
        match self.sink.update_counts(&latest.at, &count_update(write)).await? {
            UpdateOutcome::NotFound => Ok(None),
            UpdateOutcome::Updated | UpdateOutcome::Unchanged => Ok(Some(latest.at)),
        }
    }

    /// Adds the alert of a `STORM_ADD` the storm service could not count to its storm CR's
    /// carried count. A storm CR not written yet is created from the write instead. A
    /// `RESOLUTION` is recorded on its CR at once.
    async fn apply_now(&self, write: &Write) -> Result<(), SinkError> {
        if write.kind == WriteKind::Resolution {
            // A CR never written has nothing to mark.
            self.sink.update_counts(&write.target, &count_update(write)).await?;
            return Ok(());
        }
        let last_seen = count_update(write).last_seen;
        if self.sink.add_occurrences(&write.target, 1, last_seen).await? == UpdateOutcome::NotFound {
            self.coalescer.offer(write.clone());
        }
        metrics::counter!("breakwater_storm_repeats_carried_total").increment(1);
        Ok(())
    }

    /// Counts the alert of a last-resort `write` on the existing CR `at`, if it is that
    /// incident's (an increment does not name the fingerprint, so it is checked here).
    async fn count_on(&self, at: &CrRef, write: &Write, count: LastResort) -> Result<UpdateOutcome, SinkError> {
        let update = count_update(write);
        match count {
            LastResort::AddOne => {
                match self.sink.get(at).await? {
                    Some(rr) => check_owned(&rr, at, &write.signal.fingerprint)?,
                    None => return Ok(UpdateOutcome::NotFound),
                }
                self.sink.add_occurrences(at, 1, update.last_seen).await
            }
            LastResort::MergeWindow | LastResort::Vouched => self.sink.update_counts(at, &update).await,
        }
    }

    fn answer_created(&self, write: Write, created: Created) -> Answer {
        let kind = write.kind.as_str();
        self.coalescer.note_placement(&write.target, &created.namespace);
        let remediation = Some(CrRef { namespace: created.namespace.clone(), name: write.target.name.clone() });
        match created.outcome {
            CreateOutcome::Created => {
                let at = CrRef { namespace: created.namespace.clone(), name: write.target.name.clone() };
                let storm = write.kind.is_storm();
                self.owned.insert(at, Owner { fingerprint: write.signal.fingerprint.clone(), storm });
                record(kind, "created");
                // Per CR, so DEBUG: the edge logs one INFO line per webhook.
                tracing::debug!(
                    namespace = %created.namespace,
                    name = %write.target.name,
                    kind,
                    fingerprint = %write.signal.fingerprint,
                    "RemediationRequest created"
                );
                Answer::new(Outcome::Created, remediation)
            }
            CreateOutcome::AlreadyExisted => {
                record(kind, "already_existed");
                if write.kind == WriteKind::StormCreate || write.occurrence_count > 1 {
                    // A retried storm open: its alert and resource still count. A create that
                    // completes a retried delivery carries the incident's count so far:
                    // "create if missing, then count" (counts merge by maximum).
                    self.coalescer.offer(write);
                }
                Answer::new(Outcome::AlreadyExisted, remediation)
            }
        }
    }
}

/// How a last-resort create counts its alert on an open CR it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastResort {
    /// Dedup was down: nothing else counts the alert, so it adds one.
    AddOne,
    /// Dedup answered with its exact window count (it may have lost older state): merged
    /// by maximum per window, so dedup's later counts of the window add up with it.
    MergeWindow,
    /// Dedup vouched that the incident is new in this window (its CR may still be open from
    /// an earlier one): counted as [`LastResort::MergeWindow`] on an open CR found under
    /// another name; its own name is created as any create is.
    Vouched,
}

/// Where a [`Writer::create_or_count`] alert went.
enum Fallback {
    /// Counted on an existing CR: the open one found by fingerprint (`on_open`), or the one
    /// of the create's own name.
    /// `window_ends`: `at` is finished, and the incident's dedup window should end then.
    Counted { at: CrRef, on_open: bool, window_ends: Option<UnixMillis> },
    /// No open CR: created as usual.
    Created(Created),
}

fn answer_failed(write: &Write, err: &SinkError) -> Answer {
    record(write.kind.as_str(), "failed");
    tracing::warn!(target = %write.target, cause = %err, "create failed");
    let retry_after_ms =
        err.retry_after().map_or(DEFAULT_RETRY_AFTER_MS, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Answer::new(Outcome::Failed { error: client_message(err), retry_after_ms }, Some(write.target.clone()))
}

/// A stable cause for the client; the detail stays in our logs.
fn client_message(err: &SinkError) -> String {
    match err {
        SinkError::Rejected { code, .. } => format!("kubernetes rejected the create ({code})"),
        SinkError::Unavailable { .. } => "kubernetes unavailable".to_owned(),
        SinkError::Conflict { .. } => "conflicting writes".to_owned(),
        SinkError::InvalidName(_) => "invalid name".to_owned(),
        SinkError::Foreign { why, .. } => format!("the RemediationRequest was left unchanged: {why}"),
        SinkError::Io(_) | SinkError::Corrupt { .. } | SinkError::Yaml(_) => "remediation store failed".to_owned(),
    }
}

/// Counts a write's outcome in `breakwater_crd_writes_total`.
pub(crate) fn record(kind: &'static str, outcome: &'static str) {
    metrics::counter!("breakwater_crd_writes_total", "kind" => kind, "outcome" => outcome).increment(1);
}

/// Whose a CR crd-writer manages is: what [`check_owned`] compares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    fingerprint: String,
    storm: bool,
}

impl Owner {
    fn takes(&self, fingerprint: &str) -> bool {
        self.storm || fingerprint.is_empty() || self.fingerprint == fingerprint
    }
}

/// The CRs this crd-writer created or checked, so the check before a count costs a read
/// only for a CR it has not seen yet. Bounded: emptied when full.
#[derive(Debug, Default)]
struct OwnedCrs(Mutex<HashMap<CrRef, Owner>>);

/// Most CRs [`OwnedCrs`] remembers.
const MAX_OWNED: usize = 65_536;

impl OwnedCrs {
    fn get(&self, target: &CrRef) -> Option<Owner> {
        self.lock().get(target).cloned()
    }

    fn insert(&self, target: CrRef, owner: Owner) {
        let mut owned = self.lock();
        if owned.len() >= MAX_OWNED {
            owned.clear();
        }
        owned.insert(target, owner);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CrRef, Owner>> {
        // Each change is one insert or a clear: a poisoned map is still sound.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
