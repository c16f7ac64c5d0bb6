//! An in-process sink that counts its calls: for tests here and across services, where a
//! directory or an API server would only be in the way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use breakwater_signal::UnixMillis;
use tokio::sync::Mutex;

use super::{
    CountUpdate, CrPhase, CreateOutcome, Created, LatestCr, RemediationSink, SinkError, UpdateOutcome,
    add_occurrences_to, change_counts, check_owned, is_finished, latest_incident,
};
use crate::crd::{CrRef, RemediationRequest, RemediationRequestSpec, relocate};

/// Default `affectedResources` cap, as `crd_writer.affected_resources_cap`.
const DEFAULT_CAP: usize = 100;

/// How often each method of a [`MemorySink`] was called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCalls {
    pub creates: u64,
    pub gets: u64,
    /// Lookups of an open CR by fingerprint (the dedup fallback's).
    pub finds: u64,
    /// Count merges and increments.
    pub updates: u64,
    /// Updates that changed a CR (what a real backend would have written).
    pub writes: u64,
}

#[derive(Debug, Default)]
pub struct MemorySink {
    objects: Mutex<BTreeMap<CrRef, RemediationRequest>>,
    cap: usize,
    /// When set, creates in any other namespace land here, as if those namespaces were missing.
    only_namespace: Option<String>,
    creates: AtomicU64,
    gets: AtomicU64,
    finds: AtomicU64,
    updates: AtomicU64,
    writes: AtomicU64,
}

impl MemorySink {
    pub fn new() -> Self {
        Self { cap: DEFAULT_CAP, ..Self::default() }
    }

    /// Caps `affectedResources` at `cap` entries (default 100).
    #[must_use]
    pub fn with_resource_cap(mut self, cap: usize) -> Self {
        self.cap = cap;
        self
    }

    /// Pretends only `namespace` exists: every create is relocated there, as the Kubernetes
    /// sink does when a namespace is missing.
    #[must_use]
    pub fn with_only_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.only_namespace = Some(namespace.into());
        self
    }

    pub fn calls(&self) -> SinkCalls {
        SinkCalls {
            creates: self.creates.load(Ordering::Relaxed),
            gets: self.gets.load(Ordering::Relaxed),
            finds: self.finds.load(Ordering::Relaxed),
            updates: self.updates.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }

    /// Every CR held, ordered by namespace and name.
    pub async fn objects(&self) -> Vec<RemediationRequest> {
        self.objects.lock().await.values().cloned().collect()
    }

    async fn change(
        &self,
        target: &CrRef,
        fingerprint: &str,
        change: impl FnOnce(&mut RemediationRequestSpec) -> bool + Send,
    ) -> Result<UpdateOutcome, SinkError> {
        self.updates.fetch_add(1, Ordering::Relaxed);
        let mut objects = self.objects.lock().await;
        let Some(rr) = objects.get_mut(target) else {
            return Ok(UpdateOutcome::NotFound);
        };
        check_owned(rr, target, fingerprint)?;
        let finished = is_finished(rr);
        if !change_counts(&mut rr.spec, finished, change) {
            return Ok(UpdateOutcome::Unchanged);
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(UpdateOutcome::Updated)
    }
}

#[async_trait]
impl RemediationSink for MemorySink {
    async fn create(&self, rr: &RemediationRequest) -> Result<Created, SinkError> {
        self.creates.fetch_add(1, Ordering::Relaxed);
        let mut rr = rr.clone();
        if let Some(only) = &self.only_namespace
            && rr.metadata.namespace.as_deref() != Some(only)
        {
            relocate(&mut rr, only);
        }
        let target = CrRef {
            namespace: rr.metadata.namespace.clone().unwrap_or_default(),
            name: rr.metadata.name.clone().unwrap_or_default(),
        };
        let namespace = target.namespace.clone();
        let mut objects = self.objects.lock().await;
        if objects.contains_key(&target) {
            return Ok(Created { outcome: CreateOutcome::AlreadyExisted, namespace });
        }
        rr.metadata.resource_version = Some("1".to_owned());
        objects.insert(target, rr);
        Ok(Created { outcome: CreateOutcome::Created, namespace })
    }

    async fn get(&self, target: &CrRef) -> Result<Option<RemediationRequest>, SinkError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        Ok(self.objects.lock().await.get(target).cloned())
    }

    async fn update_counts(&self, target: &CrRef, update: &CountUpdate) -> Result<UpdateOutcome, SinkError> {
        self.change(target, &update.fingerprint, |spec| update.apply_to(spec, self.cap)).await
    }

    async fn find_latest(&self, namespace: &str, fingerprint: &str) -> Result<Option<LatestCr>, SinkError> {
        self.finds.fetch_add(1, Ordering::Relaxed);
        let objects = self.objects.lock().await;
        let in_namespace = objects.iter().filter(|(at, _)| at.namespace == namespace).map(|(_, rr)| rr.clone());
        Ok(latest_incident(in_namespace, fingerprint))
    }

    async fn add_occurrences(&self, target: &CrRef, n: u64, last_seen: UnixMillis) -> Result<UpdateOutcome, SinkError> {
        self.change(target, "", |spec| add_occurrences_to(spec, n, last_seen)).await
    }

    fn known_phase(&self, at: &CrRef, fingerprint: &str) -> Option<CrPhase> {
        // Never waits: busy means unknown this time.
        let objects = self.objects.try_lock().ok()?;
        objects.get(at).filter(|rr| rr.spec.signal_fingerprint == fingerprint).map(CrPhase::of)
    }
}
