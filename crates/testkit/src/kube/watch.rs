//! Watches of the fake API server: `GET <collection>?watch=true` answers a stream of
//! newline-delimited JSON events, `{"type":"ADDED|MODIFIED|DELETED","object":{…}}`, as the API
//! server does. Every create, changing update and delete is an event with the object's new
//! `resourceVersion` (the store's revision). A watch from `resourceVersion=N` gets the events
//! after N; one without (or from `0`) first gets every object as `ADDED`, then the changes.
//! `labelSelector` and `fieldSelector` filter on the object after the change (an object that
//! stops matching is not sent a `DELETED`, unlike a real server). `timeoutSeconds` ends the
//! stream (default 1800 s). A `resourceVersion` older than the events kept (the last
//! [`MAX_EVENTS`]) gets an `ERROR` event with the 410 `Expired` status, so the client lists
//! again, as `kube::runtime::watcher` does.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use super::selector::{FieldSelector, LabelSelector};
use super::{ObjectKey, Store, labels_of};

/// Events kept for watches that start from a resourceVersion.
pub(super) const MAX_EVENTS: usize = 200_000;
/// Longest a watch stays open without `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// One stored change.
#[derive(Debug, Clone)]
pub(super) struct Event {
    pub(super) revision: u64,
    pub(super) key: ObjectKey,
    pub(super) kind: &'static str,
    pub(super) object: Value,
}

/// The events and a signal to wake watches: part of the [`Store`].
#[derive(Debug)]
pub(super) struct Events {
    kept: VecDeque<Event>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Events {
    fn default() -> Self {
        Self { kept: VecDeque::new(), changed: tokio::sync::watch::channel(0).0 }
    }
}

impl Events {
    pub(super) fn record(&mut self, revision: u64, key: &ObjectKey, kind: &'static str, object: &Value) {
        if self.kept.len() >= MAX_EVENTS {
            self.kept.pop_front();
        }
        self.kept.push_back(Event { revision, key: key.clone(), kind, object: object.clone() });
        self.changed.send_replace(revision);
    }
}

/// What one watch selects.
pub(super) struct Selection {
    pub(super) group: String,
    pub(super) namespace: Option<String>,
    pub(super) plural: String,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selection {
    /// # Errors
    /// The API server's message for a selector it cannot parse.
    pub(super) fn parse(
        group: String,
        namespace: Option<String>,
        plural: String,
        query: &std::collections::HashMap<String, String>,
    ) -> Result<Self, String> {
        let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
            .map_err(|err| format!("unable to parse labelSelector: {err}"))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))?;
        Ok(Self { group, namespace, plural, labels, fields })
    }

    fn matches(&self, key: &ObjectKey, object: &Value) -> bool {
        key.group == self.group
            && key.plural == self.plural
            && self.namespace.as_ref().is_none_or(|ns| key.namespace == *ns)
            && self.fields.matches(&key.name, &key.namespace)
            && self.labels.matches(&labels_of(object))
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({ "type": kind, "object": object }).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// The body of a watch from `since` (`None`: every object first), open for `timeout`.
pub(super) fn stream(
    store: Arc<Mutex<Store>>,
    selection: Selection,
    since: Option<u64>,
    timeout: Option<Duration>,
) -> axum::body::Body {
    let (pending, last, changed) = {
        let store = store.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = store.events.changed.subscribe();
        match since {
            None => {
                let lines: VecDeque<Bytes> = store
                    .objects
                    .iter()
                    .filter(|(key, object)| selection.matches(key, object))
                    .map(|(_, object)| line("ADDED", object))
                    .collect();
                (lines, store.revision, changed)
            }
            Some(since) if store.events.kept.front().is_some_and(|oldest| oldest.revision > since + 1) => {
                let status = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {since}"), "reason": "Expired", "code": 410,
                });
                (VecDeque::from([line("ERROR", &status)]), u64::MAX, changed)
            }
            Some(since) => (VecDeque::new(), since, changed),
        }
    };
    let deadline = tokio::time::Instant::now() + timeout.unwrap_or(DEFAULT_TIMEOUT);
    let state = Watching { store, selection, pending, last, changed, deadline };
    let events = futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(line) = state.pending.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(line), state));
            }
            if state.last == u64::MAX {
                return None;
            }
            state.collect();
            if !state.pending.is_empty() {
                continue;
            }
            tokio::select! {
                changed = state.changed.changed() => if changed.is_err() { return None },
                () = tokio::time::sleep_until(state.deadline) => return None,
            }
        }
    });
    axum::body::Body::from_stream(events)
}

/// A watch in progress.
struct Watching {
    store: Arc<Mutex<Store>>,
    selection: Selection,
    pending: VecDeque<Bytes>,
    /// The revision of the last event considered.
    last: u64,
    changed: tokio::sync::watch::Receiver<u64>,
    deadline: tokio::time::Instant,
}

impl Watching {
    /// Queues the selected events after `last`.
    fn collect(&mut self) {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        self.changed.mark_unchanged();
        let after = self.last;
        for event in store.events.kept.iter().filter(|e| e.revision > after) {
            if self.selection.matches(&event.key, &event.object) {
                self.pending.push_back(line(event.kind, &event.object));
            }
            self.last = event.revision;
        }
    }
}
