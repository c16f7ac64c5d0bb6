//! Breakwater crd-writer: the only component that writes RemediationRequests.
//!
//! The edge sends it one `WriteRemediations` call per webhook. Creates (`CREATE`,
//! `STORM_CREATE`) are applied before the answer, with retries and the fallback namespace;
//! counts (`OCCURRENCE`, `STORM_ADD`) are answered `QUEUED` and coalesced, so a burst of
//! duplicates costs one Kubernetes write per flush interval, and no count is lost to a failed
//! write. Every `CREATE` of an incident is first looked up as the latest CR of its fingerprint
//! and counted there while that CR is open, or finished within the cooldown
//! ([`lifecycle`]), so an incident keeps one CR however long it lasts, and through dedup's
//! outages (the dedup of last resort; metric `breakwater_crd_dedup_fallback_total`).
//!
//! # Layout
//! - [`config`] — `CrdWriterConfig`, the `crd_writer` keys and their defaults.
//! - [`bounds`] — what one write may carry (counts, times, sizes), checked before a call is applied.
//! - [`error`] — [`Error`], failures of the component as a whole.
//! - [`crd`] — the `RemediationRequest` type (the only source of `deploy/crd.yaml`) and
//!   [`crd::build`], the pure write → CR function (labels, priority, truncation).
//! - [`sink`] — the [`RemediationSink`] trait and the monotonic count merge; backends
//!   [`sink::kube`] (API server), [`sink::dir`] (YAML files, the embedded default) and
//!   [`sink::memory`] (tests); [`sink::index`], the Kubernetes sink's index of incident CRs
//!   and their phases, fed by a watch.
//! - [`lifecycle`] — where an incident's next alert counts, from its latest CR's phase
//!   (open, finished within the cooldown, or a new CR).
//! - [`coalescer`] — pending counts per CR and their periodic flush.
//! - [`writer`] — [`writer::Writer`]: applies a call's writes (creates first looked up as an
//!   open incident, counts queued), checks a count goes to its incident's CR, answers each.
//! - [`grpc`] — [`CrdWriterGrpc`], the thin tonic face: checks a call, converts proto ↔ domain.
//!
//! The entry point is [`run`]; [`sink_from_config`] picks the backend.

// Library code must not panic on input: failures are typed errors. Tests may
// unwrap (`.clippy.toml` allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;

use breakwater_grpc::Incoming;
use breakwater_signal::{Clock, SystemClock};

pub mod bounds;
pub mod coalescer;
pub mod config;
pub mod crd;
pub mod error;
pub mod grpc;
pub mod lifecycle;
pub mod sink;
pub mod writer;

pub use coalescer::Coalescer;
pub use config::{CrdWriterConfig, RetryConfig, SinkKind};
pub use crd::{RemediationRequest, RemediationRequestSpec, RemediationRequestStatus, crd_yaml};
pub use error::{Error, Result};
pub use grpc::CrdWriterGrpc;
pub use sink::{DirSink, KubeSink, MemorySink, RemediationSink, SinkError};

/// A crd-writer ready to [`run`]: its configuration, sink and clock.
pub struct CrdWriter {
    config: CrdWriterConfig,
    sink: Arc<dyn RemediationSink>,
    clock: Arc<dyn Clock>,
    journal: Option<breakwater_embedded::Namespace>,
    cooldown: std::time::Duration,
}

impl std::fmt::Debug for CrdWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrdWriter").field("config", &self.config).finish_non_exhaustive()
    }
}

impl CrdWriter {
    /// A writer on `sink` (see [`sink_from_config`]) with the wall clock.
    pub fn new(config: CrdWriterConfig, sink: Arc<dyn RemediationSink>) -> Self {
        Self { config, sink, clock: Arc::new(SystemClock), journal: None, cooldown: lifecycle::DEFAULT_COOLDOWN }
    }

    /// How long a finished CR still counts its incident's alerts (`dedup.cooldown_secs`;
    /// see [`lifecycle`]).
    #[must_use]
    pub fn with_cooldown(mut self, cooldown: std::time::Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// Keeps counts answered `QUEUED` in `journal` until they are written, so a crash does
    /// not lose them (see [`Coalescer::with_journal`]).
    #[must_use]
    pub fn with_journal(mut self, journal: breakwater_embedded::Namespace) -> Self {
        self.journal = Some(journal);
        self
    }

    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The gRPC service and its coalescer, for embedding without [`run`]; whoever does so
    /// must drive [`Coalescer::run_until`] and [`Coalescer::final_flush`].
    ///
    /// # Errors
    /// [`Error::Journal`] when the journal cannot be read.
    pub fn into_parts(self) -> Result<(CrdWriterGrpc, Arc<Coalescer>)> {
        let mut coalescer = Coalescer::new(
            Arc::clone(&self.sink),
            Arc::clone(&self.clock),
            self.config.fallback_namespace.clone(),
            self.config.affected_resources_cap,
        )
        .with_lifecycle(Arc::new(lifecycle::Lifecycle::new(self.cooldown)));
        if let Some(journal) = self.journal {
            coalescer = coalescer.with_journal(journal)?;
        }
        let coalescer = Arc::new(coalescer);
        let grpc = CrdWriterGrpc::new(self.sink, Arc::clone(&coalescer), self.clock, &self.config);
        Ok((grpc, coalescer))
    }
}

/// The sink `config` asks for: a [`DirSink`] on `directory`, or a [`KubeSink`] on the
/// current kubeconfig or in-cluster service account.
///
/// # Errors
/// [`Error::Config`] when the configuration is invalid; [`Error::KubeConfig`] when no
/// kubeconfig or in-cluster account can be found, [`Error::KubeClient`] when it is unusable.
pub async fn sink_from_config(config: &CrdWriterConfig) -> Result<Arc<dyn RemediationSink>> {
    config.validate().map_err(Error::Config)?;
    let cap = config.affected_resources_cap;
    Ok(match config.sink {
        SinkKind::Directory => Arc::new(DirSink::new(&config.directory).with_resource_cap(cap)),
        SinkKind::Kubernetes => {
            let mut kube_config = kube::Config::infer().await.map_err(|e| Error::KubeConfig(error::kube_cause(&e)))?;
            // KubeSink retries itself (configurable, honouring retryAfterSeconds, counted in
            // metrics); kube's own 429/503/504 retry would multiply the attempts.
            kube_config.default_retry = false;
            let client = kube::Client::try_from(kube_config).map_err(|e| Error::KubeClient(error::kube_cause(&e)))?;
            Arc::new(
                KubeSink::new(client, config.retry.clone(), config.fallback_namespace.clone()).with_resource_cap(cap),
            )
        }
    })
}

/// Serves `breakwater.v1.CrdWriterService` (with health; with reflection on TCP) on `incoming`
/// (a TCP listener, or in process for `breakwater up`) and
/// flushes coalesced counts every `flush_interval_ms`, until `shutdown` resolves; then stops
/// taking calls, lets in-flight ones finish, and flushes what is pending (bounded by
/// `final_flush_timeout_ms`).
///
/// # Errors
/// [`Error::Config`] for an invalid configuration, [`Error::Grpc`] when the transport fails
/// (pending counts are flushed first).
pub async fn run(
    writer: CrdWriter,
    incoming: impl Into<Incoming>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let incoming = incoming.into();
    writer.config.validate().map_err(Error::Config)?;
    let interval = writer.config.flush_interval();
    let final_timeout = writer.config.final_flush_timeout();
    // The Kubernetes sink's watch of the phases (see `RemediationSink::follow`).
    let follower = tokio::spawn({
        let sink = Arc::clone(&writer.sink);
        async move { sink.follow().await }
    });
    let (grpc, coalescer) = writer.into_parts()?;

    let (stop_flusher, stopped) = tokio::sync::oneshot::channel::<()>();
    let flusher = tokio::spawn({
        let coalescer = Arc::clone(&coalescer);
        async move {
            coalescer
                .run_until(interval, async {
                    let _ = stopped.await;
                })
                .await;
        }
    });

    tracing::info!(addr = ?incoming.local_addr(), "crd-writer serving");
    let grpc = Arc::new(grpc);
    let incoming = incoming.with_local(|| breakwater_grpc::LocalService::CrdWriter(grpc.clone()));
    let served = breakwater_grpc::serve(CrdWriterGrpc::server(grpc), "crd-writer", incoming, shutdown).await;

    let _ = stop_flusher.send(());
    if let Err(err) = flusher.await {
        tracing::error!(cause = %err, "flusher task failed");
    }
    coalescer.final_flush(final_timeout).await;
    follower.abort();
    served.map_err(Error::from)
}
