//! The Kubernetes sink's index of incident CRs, fed by a watch on RemediationRequests
//! (`kube::runtime::watcher`) and by the sink's own writes, so the lookup before each create
//! ([`RemediationSink::find_latest`](super::RemediationSink::find_latest)) costs no request
//! once the watch has listed every CR. It holds only [`IncidentEntry`]s (names, phases,
//! times), never CR bodies. Until the first list completes, and while the watch fails (say,
//! RBAC without `watch`), lookups list by label as before.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use kube::runtime::watcher::Event;

use super::{CrPhase, IncidentEntry, LatestCr, latest_of};
use crate::crd::{CrRef, RemediationRequest};

/// Entries by (namespace, fingerprint), then by name.
type Entries = HashMap<(String, String), HashMap<String, IncidentEntry>>;

#[derive(Debug, Default)]
pub struct CrIndex(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    /// Whether `entries` holds every CR: the watch's first list completed.
    synced: bool,
    entries: Entries,
    /// A new list in progress (the watch restarted), swapped in when it completes.
    relisting: Option<Entries>,
}

impl CrIndex {
    /// The latest incident CR of `fingerprint` in `namespace`, or `None` when the index
    /// cannot say (not synced yet): ask the API server.
    pub fn latest(&self, namespace: &str, fingerprint: &str) -> Option<Option<LatestCr>> {
        let state = self.lock();
        if !state.synced {
            return None;
        }
        let entries = state.entries.get(&(namespace.to_owned(), fingerprint.to_owned()));
        Some(entries.and_then(|by_name| latest_of(by_name.values())))
    }

    /// The phase of the CR `at` of `fingerprint`, if the index holds it.
    pub fn phase(&self, at: &CrRef, fingerprint: &str) -> Option<CrPhase> {
        let state = self.lock();
        let by_name = state.entries.get(&(at.namespace.clone(), fingerprint.to_owned()))?;
        by_name.get(&at.name).map(|entry| entry.latest.phase)
    }

    /// Records `rr` as it is now (a write of ours, or a watch event), unless a newer version
    /// of it is recorded already.
    pub fn upsert(&self, rr: &RemediationRequest) {
        let mut state = self.lock();
        upsert_into(&mut state.entries, rr);
        if let Some(relisting) = state.relisting.as_mut() {
            upsert_into(relisting, rr);
        }
    }

    fn remove(&self, rr: &RemediationRequest) {
        let mut state = self.lock();
        remove_from(&mut state.entries, rr);
        if let Some(relisting) = state.relisting.as_mut() {
            remove_from(relisting, rr);
        }
    }

    /// Stops answering from the index until the watch has listed again (it failed, so what
    /// changed meanwhile is unknown).
    pub fn unsync(&self) {
        self.lock().synced = false;
    }

    /// Applies one event of the watch.
    pub fn apply(&self, event: Event<RemediationRequest>) {
        match event {
            Event::Apply(rr) => self.upsert(&rr),
            Event::Delete(rr) => self.remove(&rr),
            Event::Init => self.lock().relisting = Some(Entries::new()),
            Event::InitApply(rr) => {
                let mut state = self.lock();
                match state.relisting.as_mut() {
                    Some(relisting) => upsert_into(relisting, &rr),
                    None => upsert_into(&mut state.entries, &rr),
                }
            }
            Event::InitDone => {
                let mut state = self.lock();
                if let Some(relisting) = state.relisting.take() {
                    state.entries = relisting;
                }
                if !state.synced {
                    tracing::info!(
                        incidents = state.entries.len(),
                        "RemediationRequests indexed; lookups need no request"
                    );
                }
                state.synced = true;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each change is a few map operations without a panic between them.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn at_of(rr: &RemediationRequest) -> CrRef {
    CrRef {
        namespace: rr.metadata.namespace.clone().unwrap_or_default(),
        name: rr.metadata.name.clone().unwrap_or_default(),
    }
}

fn upsert_into(entries: &mut Entries, rr: &RemediationRequest) {
    let Some(entry) = IncidentEntry::of(rr) else {
        // No longer an incident CR (its labels changed): forget it.
        remove_from(entries, rr);
        return;
    };
    let at = at_of(rr);
    let by_name = entries.entry((at.namespace, entry.fingerprint.clone())).or_default();
    match by_name.get(&at.name) {
        Some(known) if known.resource_version > entry.resource_version => {}
        _ => {
            by_name.insert(at.name, entry);
        }
    }
}

fn remove_from(entries: &mut Entries, rr: &RemediationRequest) {
    // `spec.signalFingerprint` is immutable, so it finds the entry.
    let at = at_of(rr);
    let key = (at.namespace, rr.spec.signal_fingerprint.clone());
    if let Some(by_name) = entries.get_mut(&key) {
        by_name.remove(&at.name);
        if by_name.is_empty() {
            entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests;
