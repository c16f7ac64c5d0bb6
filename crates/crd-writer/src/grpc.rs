//! The gRPC face: `breakwater.v1.CrdWriterService` and the proto ↔ domain conversion;
//! [`Writer`] applies the writes.
//!
//! One result per write, in request order. A bad write gets `FAILED` with a short cause and
//! does not fail the batch. Creates are applied before the answer (concurrently within the
//! batch); counts are queued on the coalescer and answered `QUEUED`. A `CREATE` is first
//! looked up as an open incident and counted there (`Writer::create_or_count`).
//!
//! Before any write of a call is applied, the whole call is checked, and refused whole, so a
//! refused call records nothing: every write within [`bounds`](crate::bounds)
//! (`INVALID_ARGUMENT` naming the field), every target namespace permitted by
//! `crd_writer.namespaces` (`PERMISSION_DENIED`), and every count or resolution aimed at an
//! existing CR aimed at one crd-writer manages, of the same incident (`FAILED_PRECONDITION`;
//! [`crate::sink::check_owned`], which every sink also applies to each write it makes).

use std::sync::Arc;

use breakwater_proto::v1 as pb;
use breakwater_proto::v1::crd_writer_service_server::{CrdWriterService, CrdWriterServiceServer};
use breakwater_signal::{Clock, NamespacePolicy, fingerprint};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::coalescer::Coalescer;
use crate::config::CrdWriterConfig;
use crate::crd::{CrRef, StormType, StormWrite, Write, WriteKind, is_dns1123_label};
use crate::error::Error;
use crate::sink::RemediationSink;
use crate::writer::{Answer, Incoming, LastResort, NotOwned, Outcome, Writer, record};

pub struct CrdWriterGrpc {
    writer: Writer,
    clock: Arc<dyn Clock>,
    max_batch: usize,
    namespaces: NamespacePolicy,
}

impl std::fmt::Debug for CrdWriterGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrdWriterGrpc").field("writer", &self.writer).finish_non_exhaustive()
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
            writer: Writer::new(sink, coalescer, clock.clone(), config.fallback_namespace.clone()),
            clock,
            max_batch: config.max_batch,
            namespaces: config.namespaces.clone(),
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
            let namespace =
                if target.namespace.is_empty() { self.writer.fallback_namespace() } else { &target.namespace };
            if !self.namespaces.permits(namespace) {
                metrics::counter!("breakwater_crd_writes_refused_total", "reason" => "namespace").increment(1);
                return Err(bad_request(
                    Code::PermissionDenied,
                    &format!("writes[{i}].remediation.namespace"),
                    "a namespace crd_writer.namespaces permits",
                ));
            }
        }
        // Counts and resolutions for an existing CR: of a storm (any incident), or of theirs.
        let uses = writes
            .iter()
            .enumerate()
            .filter(|(_, w)| {
                matches!(w.kind(), pb::WriteKind::Occurrence | pb::WriteKind::StormAdd | pb::WriteKind::Resolution)
                    && !w.find_by_fingerprint
            })
            .filter_map(|(i, w)| {
                let (target, signal) = (w.remediation.as_ref()?, w.signal.as_ref()?);
                let fingerprint =
                    if w.kind() == pb::WriteKind::StormAdd { String::new() } else { signal.fingerprint.clone() };
                Some((i, CrRef { namespace: target.namespace.clone(), name: target.name.clone() }, fingerprint))
            })
            .collect();
        self.writer.check_owners(uses).await.map_err(|NotOwned { index, why }| foreign(index, why))
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
        let mut results: Vec<Option<pb::WriteResult>> = vec![None; writes.len()];
        let mut read: Vec<(usize, Incoming)> = Vec::with_capacity(writes.len());
        for (index, raw) in writes.into_iter().enumerate() {
            let last_resort = match (raw.dedup_unavailable, raw.dedup_window_exact) {
                (false, _) => LastResort::Vouched,
                (true, true) => LastResort::MergeWindow,
                (true, false) => LastResort::AddOne,
            };
            let storm_unavailable = raw.storm_unavailable;
            let (kind, remediation) = (kind_label(raw.kind), raw.remediation.clone());
            match Write::from_proto(raw, shared.clone()) {
                Ok(write) => read.push((index, Incoming { write, last_resort, storm_unavailable })),
                Err(InvalidWrite(why)) => {
                    record(kind, "invalid");
                    results[index] = Some(failed(remediation, why.to_owned(), 0));
                }
            }
        }
        let (at, incoming): (Vec<usize>, Vec<Incoming>) = read.into_iter().unzip();
        for (index, answer) in at.into_iter().zip(self.writer.apply(incoming).await) {
            results[index] = Some(answer_of(answer));
        }
        results.into_iter().map(Option::unwrap_or_default).collect()
    }
}

/// An [`Answer`] as the caller reads it.
fn answer_of(answer: Answer) -> pb::WriteResult {
    let remediation = answer.at.map(|at| pb::RemediationRef { namespace: at.namespace, name: at.name });
    let window_ends_unix_ms = answer.window_ends.unwrap_or(0);
    let outcome = match answer.outcome {
        Outcome::Created => pb::WriteOutcome::Created,
        Outcome::AlreadyExisted => pb::WriteOutcome::AlreadyExisted,
        Outcome::Queued => pb::WriteOutcome::Queued,
        Outcome::NothingToDo => pb::WriteOutcome::NothingToDo,
        Outcome::Failed { error, retry_after_ms } => {
            return pb::WriteResult { window_ends_unix_ms, ..failed(remediation, error, retry_after_ms) };
        }
    };
    pb::WriteResult { outcome: outcome.into(), remediation, window_ends_unix_ms, ..pb::WriteResult::default() }
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
