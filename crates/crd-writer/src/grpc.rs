//! The gRPC face: `breakwater.v1.CrdWriterService` and the proto ↔ domain conversion.
//!
//! One result per write, in request order. A bad write gets `FAILED` with a short cause and
//! does not fail the batch. Creates are applied before the answer (concurrently within the
//! batch); counts are queued on the [`Coalescer`] and answered `QUEUED`. A `CREATE` is first
//! looked up as an open incident and counted there (`CrdWriterGrpc::create_or_count`).
//!
//! Before any write of a call is applied, the whole call is checked, and refused whole, so a
//! refused call records nothing: every write within [`bounds`](crate::bounds)
//! (`INVALID_ARGUMENT` naming the field), every target namespace permitted by
//! `crd_writer.namespaces` (`PERMISSION_DENIED`), and every count or resolution aimed at an
//! existing CR aimed at one crd-writer manages, of the same incident (`FAILED_PRECONDITION`;
//! [`crate::sink::check_owned`], which every sink also applies to each write it makes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use breakwater_proto::v1 as pb;
use breakwater_proto::v1::crd_writer_service_server::{CrdWriterService, CrdWriterServiceServer};
use breakwater_signal::{Clock, NamespacePolicy, UnixMillis, fingerprint};
use futures::StreamExt;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::coalescer::{Coalescer, count_update};
use crate::config::CrdWriterConfig;
use crate::crd::{self, CrRef, RemediationRequest, StormType, StormWrite, Write, WriteKind, is_dns1123_label};
use crate::error::Error;
use crate::lifecycle::{Lifecycle, Verdict};
use crate::sink::{
    BATCH_CONCURRENCY, CrPhase, CreateOutcome, Created, RemediationSink, SinkError, UpdateOutcome, check_owned,
};

/// Suggested pause before retrying a failed create when Kubernetes did not ask for one.
const DEFAULT_RETRY_AFTER_MS: u64 = 1000;

pub struct CrdWriterGrpc {
    sink: Arc<dyn RemediationSink>,
    coalescer: Arc<Coalescer>,
    clock: Arc<dyn Clock>,
    fallback_namespace: String,
    max_batch: usize,
    namespaces: NamespacePolicy,
    /// CRs known to be crd-writer's, and whose: checked before counts are accepted for them.
    owned: Arc<OwnedCrs>,
    /// Where a create's alert goes, from its incident's latest CR (shared with the coalescer).
    lifecycle: Arc<Lifecycle>,
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

impl std::fmt::Debug for CrdWriterGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrdWriterGrpc").field("fallback_namespace", &self.fallback_namespace).finish_non_exhaustive()
    }
}

impl CrdWriterGrpc {
    pub fn new(
        sink: Arc<dyn RemediationSink>,
        coalescer: Arc<Coalescer>,
        clock: Arc<dyn Clock>,
        config: &CrdWriterConfig,
    ) -> Self {
        Self {
            sink,
            clock,
            fallback_namespace: config.fallback_namespace.clone(),
            max_batch: config.max_batch,
            namespaces: config.namespaces.clone(),
            owned: Arc::default(),
            lifecycle: coalescer.lifecycle(),
            coalescer,
        }
    }

    /// Checks a whole call before anything of it is applied (see the module doc); writes
    /// that are malformed are left to [`Self::write_all`], which fails them one by one.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT`, `PERMISSION_DENIED` or `FAILED_PRECONDITION`, naming the write.
    pub async fn check_call(&self, writes: &[pb::RemediationWrite], shared: &pb::SharedValues) -> Result<(), Status> {
        let now = self.clock.now();
        crate::bounds::check_shared(shared).map_err(|v| bad_request(Code::InvalidArgument, &v.field, &v.expected))?;
        for (i, write) in writes.iter().enumerate() {
            crate::bounds::check(i, write, now)
                .map_err(|v| bad_request(Code::InvalidArgument, &v.field, &v.expected))?;
            let Some(target) = &write.remediation else { continue };
            let namespace = if target.namespace.is_empty() { &self.fallback_namespace } else { &target.namespace };
            if !self.namespaces.permits(namespace) {
                metrics::counter!("breakwater_crd_writes_refused_total", "reason" => "namespace").increment(1);
                return Err(bad_request(
                    Code::PermissionDenied,
                    &format!("writes[{i}].remediation.namespace"),
                    "a namespace crd_writer.namespaces permits",
                ));
            }
        }
        self.check_owners(writes).await
    }

    /// Refuses counts and resolutions for an existing CR that is not crd-writer's, or is
    /// another incident's. A CR that does not exist (yet) is fine: crd-writer creates it. A
    /// CR that cannot be read now is let through: the sink checks again before it writes.
    async fn check_owners(&self, writes: &[pb::RemediationWrite]) -> Result<(), Status> {
        let mut unknown: HashMap<CrRef, Vec<(usize, String)>> = HashMap::new();
        for (i, write) in writes.iter().enumerate() {
            let kind = write.kind();
            if !matches!(kind, pb::WriteKind::Occurrence | pb::WriteKind::StormAdd | pb::WriteKind::Resolution)
                || write.find_by_fingerprint
            {
                continue;
            }
            let (Some(target), Some(signal)) = (&write.remediation, &write.signal) else { continue };
            let fingerprint = if kind == pb::WriteKind::StormAdd { String::new() } else { signal.fingerprint.clone() };
            let mut target = CrRef { namespace: target.namespace.clone(), name: target.name.clone() };
            if target.namespace.is_empty() {
                target.namespace.clone_from(&self.fallback_namespace);
            }
            let at = self.coalescer.placement(&target);
            match self.owned.get(&at) {
                Some(owner) if owner.takes(&fingerprint) => {}
                Some(_) => return Err(foreign(i, "it is another incident's (its fingerprint differs)")),
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
                    return Err(foreign(*i, why));
                }
            }
            let owner = Owner { fingerprint: rr.spec.signal_fingerprint.clone(), storm: rr.spec.is_storm };
            self.owned.insert(at, owner);
        }
        Ok(())
    }

    pub fn into_server(self) -> CrdWriterServiceServer<Self> {
        Self::server(Arc::new(self))
    }

    /// The gRPC server of `grpc`.
    pub fn server(grpc: Arc<Self>) -> CrdWriterServiceServer<Self> {
        CrdWriterServiceServer::from_arc(grpc)
            .max_decoding_message_size(breakwater_grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(breakwater_grpc::MAX_MESSAGE_BYTES)
    }

    /// Applies `writes`, whose signals also have the `shared` labels and annotations: one
    /// result per write, in order.
    pub async fn write_all(&self, writes: Vec<pb::RemediationWrite>, shared: pb::SharedValues) -> Vec<pb::WriteResult> {
        let shared = Arc::new(shared);
        let now = self.clock.now();
        let mut results: Vec<Option<pb::WriteResult>> = vec![None; writes.len()];
        let mut creates: Vec<(usize, Write)> = Vec::new();
        let mut rrs = Vec::new();
        let mut fallbacks: Vec<(usize, Write, RemediationRequest, LastResort)> = Vec::new();
        let mut immediate: Vec<(usize, Write)> = Vec::new();
        let mut late: Vec<(usize, Write)> = Vec::new();
        let mut queued: Vec<Write> = Vec::new();
        for (index, raw) in writes.into_iter().enumerate() {
            let kind = kind_label(raw.kind);
            let remediation = raw.remediation.clone();
            let dedup_unavailable = raw.dedup_unavailable;
            let storm_unavailable = raw.storm_unavailable;
            let count = if raw.dedup_window_exact { LastResort::MergeWindow } else { LastResort::AddOne };
            match Write::from_proto(raw, shared.clone()) {
                Err(InvalidWrite(why)) => {
                    record(kind, "invalid");
                    results[index] = Some(failed(remediation, why.to_owned(), 0));
                }
                // Every create looks for an open CR of its incident first (see `create_or_count`).
                Ok(write) if write.kind == WriteKind::Create => {
                    let rr = crd::build(&write, now, &self.fallback_namespace);
                    fallbacks.push((index, write, rr, if dedup_unavailable { count } else { LastResort::Vouched }));
                }
                Ok(write) if write.kind.is_create() => {
                    rrs.push(crd::build(&write, now, &self.fallback_namespace));
                    creates.push((index, write));
                }
                Ok(write) if write.kind == WriteKind::StormAdd && storm_unavailable => immediate.push((index, write)),
                // Applied before answering: the incident's next firing must find it closed.
                Ok(write) if write.kind == WriteKind::Resolution => immediate.push((index, write)),
                Ok(write) if write.kind == WriteKind::LateResolution => late.push((index, write)),
                Ok(write) => {
                    record(kind, "queued");
                    let mut answer = result(pb::WriteOutcome::Queued, remediation);
                    if write.kind == WriteKind::Occurrence {
                        answer.window_ends_unix_ms = self.window_end(&write, now).unwrap_or(0);
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
                    result(pb::WriteOutcome::Queued, Some(ref_of(&at)))
                }
                Ok(None) => {
                    record(write.kind.as_str(), "nothing_to_do");
                    result(pb::WriteOutcome::NothingToDo, None)
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
                    result(pb::WriteOutcome::Queued, Some(ref_of(&write.target)))
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
                    let mut answer = result(pb::WriteOutcome::AlreadyExisted, Some(ref_of(&at)));
                    answer.window_ends_unix_ms = window_ends.unwrap_or(0);
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
        results.into_iter().map(Option::unwrap_or_default).collect()
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

    fn answer_created(&self, write: Write, created: Created) -> pb::WriteResult {
        let kind = write.kind.as_str();
        self.coalescer.note_placement(&write.target, &created.namespace);
        let remediation =
            Some(pb::RemediationRef { namespace: created.namespace.clone(), name: write.target.name.clone() });
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
                result(pb::WriteOutcome::Created, remediation)
            }
            CreateOutcome::AlreadyExisted => {
                record(kind, "already_existed");
                if write.kind == WriteKind::StormCreate || write.occurrence_count > 1 {
                    // A retried storm open: its alert and resource still count. A create that
                    // completes a retried delivery carries the incident's count so far:
                    // "create if missing, then count" (counts merge by maximum).
                    self.coalescer.offer(write);
                }
                result(pb::WriteOutcome::AlreadyExisted, remediation)
            }
        }
    }
}

/// How a last-resort create counts its alert on an open CR it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastResort {
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

/// Where a [`CrdWriterGrpc::create_or_count`] alert went.
enum Fallback {
    /// Counted on an existing CR: the open one found by fingerprint (`on_open`), or the one
    /// of the create's own name.
    /// `window_ends`: `at` is finished, and the incident's dedup window should end then.
    Counted { at: CrRef, on_open: bool, window_ends: Option<UnixMillis> },
    /// No open CR: created as usual.
    Created(Created),
}

fn answer_failed(write: &Write, err: &SinkError) -> pb::WriteResult {
    record(write.kind.as_str(), "failed");
    tracing::warn!(target = %write.target, cause = %err, "create failed");
    let retry_after_ms =
        err.retry_after().map_or(DEFAULT_RETRY_AFTER_MS, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    failed(Some(ref_of(&write.target)), client_message(err), retry_after_ms)
}

#[tonic::async_trait]
impl CrdWriterService for CrdWriterGrpc {
    #[tracing::instrument(skip_all, fields(breakwater.component = "crd-writer", writes = request.get_ref().writes.len()))]
    async fn write_remediations(
        &self,
        request: Request<pb::WriteRemediationsRequest>,
    ) -> Result<Response<pb::WriteRemediationsResponse>, Status> {
        let pb::WriteRemediationsRequest { writes, shared } = request.into_inner();
        if writes.len() > self.max_batch {
            return Err(Error::BatchTooLarge { len: writes.len(), max: self.max_batch }.into());
        }
        let shared = shared.unwrap_or_default();
        self.check_call(&writes, &shared).await?;
        Ok(Response::new(pb::WriteRemediationsResponse { results: self.write_all(writes, shared).await }))
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::BatchTooLarge { len, max } => {
                let mut details = ErrorDetails::new();
                details.add_bad_request_violation("writes", format!("{len} writes, at most {max} per request"));
                Status::with_error_details(Code::InvalidArgument, "too many writes in one request", details)
            }
            Error::Sink(_) | Error::KubeConfig(_) | Error::KubeClient(_) => {
                Status::unavailable("remediation sink unavailable")
            }
            Error::Config(_) | Error::Grpc(_) | Error::Journal(_) => Status::internal("crd-writer is misconfigured"),
        }
    }
}

/// A refusal of the whole call naming the `field` and what it `expected`.
fn bad_request(code: Code, field: &str, expected: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field, format!("must be {expected}"));
    Status::with_error_details(code, format!("{field} refused: must be {expected}"), details)
}

fn foreign(index: usize, why: &str) -> Status {
    metrics::counter!("breakwater_crd_writes_refused_total", "reason" => "foreign").increment(1);
    let mut details = ErrorDetails::new();
    let field = format!("writes[{index}].remediation");
    details.add_precondition_failure_violation("NOT_MANAGED", field.clone(), why.to_owned());
    Status::with_error_details(
        Code::FailedPrecondition,
        format!(
            "{field} refused: crd-writer changes only RemediationRequests it manages, of the same incident, and {why}; nothing was written"
        ),
        details,
    )
}

/// Why a write was refused, as sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidWrite(pub &'static str);

impl TryFrom<pb::RemediationWrite> for Write {
    type Error = InvalidWrite;

    /// A write whose signal shares nothing with others.
    fn try_from(raw: pb::RemediationWrite) -> Result<Self, Self::Error> {
        Write::from_proto(raw, Arc::default())
    }
}

impl Write {
    /// `raw`, whose signal also has the `shared` labels and annotations of its call.
    ///
    /// # Errors
    /// [`InvalidWrite`] naming what is wrong with `raw`.
    pub fn from_proto(raw: pb::RemediationWrite, shared: Arc<pb::SharedValues>) -> Result<Self, InvalidWrite> {
        let kind = match raw.kind() {
            pb::WriteKind::Unspecified => return Err(InvalidWrite("kind is unspecified")),
            pb::WriteKind::Create => WriteKind::Create,
            pb::WriteKind::Occurrence => WriteKind::Occurrence,
            pb::WriteKind::StormCreate => WriteKind::StormCreate,
            pb::WriteKind::StormAdd => WriteKind::StormAdd,
            pb::WriteKind::Resolution if raw.find_by_fingerprint => WriteKind::LateResolution,
            pb::WriteKind::Resolution => WriteKind::Resolution,
        };
        if raw.find_by_fingerprint && kind != WriteKind::LateResolution {
            return Err(InvalidWrite("find_by_fingerprint is only for a RESOLUTION"));
        }
        let identity_only = raw.signal_identity_only;
        if identity_only && !matches!(kind, WriteKind::Occurrence | WriteKind::Resolution | WriteKind::LateResolution) {
            return Err(InvalidWrite("signal_identity_only is only for an OCCURRENCE or a RESOLUTION"));
        }
        let storm_type = raw.storm_type();
        let signal = raw.signal.ok_or(InvalidWrite("signal is missing"))?;
        let target = raw.remediation.ok_or(InvalidWrite("remediation is missing"))?;
        // A late resolution names no CR: it is looked up.
        let no_name = kind == WriteKind::LateResolution && target.name.is_empty();
        if !no_name && !is_dns1123_label(&target.name) {
            return Err(InvalidWrite("remediation.name is not a DNS-1123 label of at most 63 characters"));
        }
        if !target.namespace.is_empty() && !is_dns1123_label(&target.namespace) {
            return Err(InvalidWrite("remediation.namespace is not a namespace name"));
        }
        if !fingerprint::is_valid(&signal.fingerprint) {
            return Err(InvalidWrite("signal.fingerprint is not 64 lower-case hex characters"));
        }
        let storm = match kind {
            WriteKind::Create | WriteKind::Occurrence | WriteKind::Resolution | WriteKind::LateResolution => None,
            WriteKind::StormCreate | WriteKind::StormAdd => Some(StormWrite {
                storm_type: match (storm_type, kind) {
                    (pb::StormType::Rate, _) => Some(StormType::Rate),
                    (pb::StormType::Pattern, _) => Some(StormType::Pattern),
                    // A repeat of a folded alert is counted without knowing how the storm began.
                    (pb::StormType::Unspecified, WriteKind::StormAdd) => None,
                    (pb::StormType::Unspecified, _) => return Err(InvalidWrite("storm_type is unspecified")),
                },
                window_start: raw.storm_window_start_unix_ms,
                // At most a day (storm.max_window_secs' bound), so a caller cannot write nonsense.
                window_secs: raw.storm_window_secs.min(86_400),
                alert_count: raw.storm_alert_count,
                resource_listed: raw.resource_listed,
                resources_omitted: raw.resources_omitted,
            }),
        };
        Ok(Write {
            kind,
            target: CrRef { namespace: target.namespace, name: target.name },
            signal,
            shared,
            first_seen: raw.first_seen_unix_ms,
            last_seen: raw.last_seen_unix_ms,
            occurrence_count: raw.occurrence_count,
            storm,
            identity_only,
        })
    }
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

fn kind_label(kind: i32) -> &'static str {
    match pb::WriteKind::try_from(kind) {
        Ok(pb::WriteKind::Create) => "create",
        Ok(pb::WriteKind::Occurrence) => "occurrence",
        Ok(pb::WriteKind::StormCreate) => "storm_create",
        Ok(pb::WriteKind::StormAdd) => "storm_add",
        Ok(pb::WriteKind::Resolution) => "resolution",
        Ok(pb::WriteKind::Unspecified) | Err(_) => "unspecified",
    }
}

fn record(kind: &'static str, outcome: &'static str) {
    metrics::counter!("breakwater_crd_writes_total", "kind" => kind, "outcome" => outcome).increment(1);
}

fn ref_of(target: &CrRef) -> pb::RemediationRef {
    pb::RemediationRef { namespace: target.namespace.clone(), name: target.name.clone() }
}

fn result(outcome: pb::WriteOutcome, remediation: Option<pb::RemediationRef>) -> pb::WriteResult {
    pb::WriteResult { outcome: outcome.into(), remediation, ..pb::WriteResult::default() }
}

fn failed(remediation: Option<pb::RemediationRef>, error: String, retry_after_ms: u64) -> pb::WriteResult {
    pb::WriteResult {
        outcome: pb::WriteOutcome::Failed.into(),
        remediation,
        error,
        retry_after_ms,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
