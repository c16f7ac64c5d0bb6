//! The first two sources of a namespace's environment when they come from the API server:
//! the namespace's label, then the overrides ConfigMap. Each answer is remembered for
//! `cache_ttl_secs`, so an alert costs a map lookup, not an API call; a namespace asked by
//! many webhooks at once is fetched once, and they all wait for that one answer.
//!
//! A lookup that fails or takes longer than `lookup_timeout_ms` is counted, logged and
//! remembered for a few seconds only: the value known before stays in use if there was
//! one, else the next source answers (the ConfigMap, then the alert's label).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::Api;
use tokio::sync::OnceCell;

use crate::config::ClassificationConfig;

/// How long a failed lookup is remembered at most (less when `cache_ttl_secs` is less).
const ERROR_TTL: Duration = Duration::from_secs(5);

/// The overrides ConfigMap's entries: environment by namespace.
type Overrides = Arc<HashMap<String, Arc<str>>>;

/// Namespace labels and the overrides ConfigMap, read through a cache.
pub struct KubernetesEnvironments {
    namespaces: Api<Namespace>,
    /// The overrides ConfigMap's API (in its namespace) and name; `None`: no ConfigMap.
    overrides_map: Option<(Api<ConfigMap>, String)>,
    label: String,
    timeout: Duration,
    ttl: Duration,
    error_ttl: Duration,
    labels: TtlCache<Option<Arc<str>>>,
    overrides: TtlCache<Overrides>,
}

impl std::fmt::Debug for KubernetesEnvironments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesEnvironments").field("label", &self.label).finish_non_exhaustive()
    }
}

impl KubernetesEnvironments {
    /// Reads through `client`, which should not retry by itself (`default_retry = false`):
    /// a lookup is bounded by `lookup_timeout_ms` and falls back at once.
    pub fn new(client: kube::Client, config: &ClassificationConfig) -> Self {
        let ttl = Duration::from_secs(config.cache_ttl_secs);
        let overrides_map =
            config.overrides().map(|(namespace, name)| (Api::namespaced(client.clone(), namespace), name.to_owned()));
        Self {
            namespaces: Api::all(client),
            overrides_map,
            label: config.namespace_label.clone(),
            timeout: Duration::from_millis(config.lookup_timeout_ms),
            ttl,
            error_ttl: ttl.min(ERROR_TTL),
            labels: TtlCache::new(config.cache_max_entries),
            overrides: TtlCache::new(1),
        }
    }

    /// The environment of each of `namespaces` (distinct, sorted) from its label, else from
    /// the ConfigMap; `None` when neither names one. All lookups run at once.
    pub async fn resolve(&self, namespaces: &[&str], now: Instant) -> Vec<(String, Option<Arc<str>>)> {
        if let Some(cached) = self.cached(namespaces, now) {
            return cached;
        }
        let labels = futures::future::join_all(namespaces.iter().map(|ns| self.label_of(ns, now)));
        let (labels, overrides) = futures::join!(labels, self.overrides(now));
        namespaces
            .iter()
            .zip(labels)
            .map(|(ns, label)| ((*ns).to_owned(), label.or_else(|| overrides.get(*ns).cloned())))
            .collect()
    }

    /// What `resolve` answers when the cache holds all of it: one lock of each cache, no
    /// future. `None` when something is missing or expired.
    fn cached(&self, namespaces: &[&str], now: Instant) -> Option<Vec<(String, Option<Arc<str>>)>> {
        let mut found = self.labels.fresh(namespaces, now)?;
        if found.iter().any(Option::is_none) && self.overrides_map.is_some() {
            let [overrides] = self.overrides.fresh(&[""], now)?.try_into().ok()?;
            for (ns, env) in namespaces.iter().zip(&mut found) {
                if env.is_none() {
                    *env = overrides.get(*ns).cloned();
                }
            }
        }
        Some(namespaces.iter().map(|ns| (*ns).to_owned()).zip(found).collect())
    }

    async fn label_of(&self, namespace: &str, now: Instant) -> Option<Arc<str>> {
        self.labels
            .get_or_fetch(namespace, now, |stale| async move {
                let looked = tokio::time::timeout(self.timeout, self.namespaces.get_opt(namespace)).await;
                match looked {
                    Ok(Ok(found)) => {
                        record("namespace", if found.is_some() { "ok" } else { "not_found" });
                        let value = found
                            .and_then(|ns| ns.metadata.labels)
                            .and_then(|mut labels| labels.remove(&self.label))
                            .filter(|env| !env.is_empty())
                            .map(Arc::from);
                        (value, now + self.ttl)
                    }
                    Ok(Err(e)) => {
                        self.failed("namespace", namespace, cause(&e));
                        (stale.flatten(), now + self.error_ttl)
                    }
                    Err(_) => {
                        self.failed("namespace", namespace, self.timed_out());
                        (stale.flatten(), now + self.error_ttl)
                    }
                }
            })
            .await
    }

    async fn overrides(&self, now: Instant) -> Overrides {
        let Some((api, name)) = &self.overrides_map else { return Overrides::default() };
        self.overrides
            .get_or_fetch("", now, |stale| async move {
                match tokio::time::timeout(self.timeout, api.get_opt(name)).await {
                    Ok(Ok(found)) => {
                        record("configmap", if found.is_some() { "ok" } else { "not_found" });
                        let entries = found
                            .and_then(|map| map.data)
                            .into_iter()
                            .flatten()
                            .filter(|(_, env)| !env.is_empty())
                            .map(|(ns, env)| (ns, Arc::from(env)))
                            .collect();
                        (Arc::new(entries), now + self.ttl)
                    }
                    Ok(Err(e)) => {
                        self.failed("configmap", name, cause(&e));
                        (stale.unwrap_or_default(), now + self.error_ttl)
                    }
                    Err(_) => {
                        self.failed("configmap", name, self.timed_out());
                        (stale.unwrap_or_default(), now + self.error_ttl)
                    }
                }
            })
            .await
    }

    fn timed_out(&self) -> String {
        format!("no answer within edge.classification.lookup_timeout_ms = {}", self.timeout.as_millis())
    }

    fn failed(&self, object: &'static str, name: &str, why: String) {
        record(object, "error");
        tracing::warn!(
            object,
            name,
            cause = %why,
            "environment lookup failed; the environment known before, else the next source, is used for a few seconds"
        );
    }
}

fn record(object: &'static str, result: &'static str) {
    metrics::counter!("breakwater_environment_lookups_total", "object" => object, "result" => result).increment(1);
}

/// An API error, with a hint when the edge's account lacks the RBAC to read.
fn cause(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => format!(
            "{error} (the edge's account needs get on namespaces and on the overrides ConfigMap: see \
             deploy/kustomize/base/environment-reader-role.yaml)"
        ),
        _ => error.to_string(),
    }
}

/// What the cache holds for a key.
enum Known<V> {
    Fresh(V),
    Expired(V),
    Fetching(Arc<OnceCell<Fetched<V>>>, Option<V>),
}

/// A fetched value and until when it holds.
struct Fetched<V> {
    value: V,
    expires: Instant,
}

struct Slot<V> {
    /// Set once the fetch finished; callers arriving meanwhile wait on it.
    cell: Arc<OnceCell<Fetched<V>>>,
    /// The value of the entry this one replaced, for a fetch that fails.
    stale: Option<V>,
}

/// Values by key until they expire, at most `max` keys, each fetched once at a time.
struct TtlCache<V> {
    entries: Mutex<HashMap<String, Slot<V>>>,
    max: usize,
}

impl<V: Clone> TtlCache<V> {
    fn new(max: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), max: max.max(1) }
    }

    /// The values of `keys` while they all hold at `now`; `None` when one does not.
    fn fresh(&self, keys: &[&str], now: Instant) -> Option<Vec<V>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        keys.iter()
            .map(|key| {
                let fetched = entries.get(*key)?.cell.get()?;
                (fetched.expires > now).then(|| fetched.value.clone())
            })
            .collect()
    }

    /// The value of `key` while it holds at `now`; else `fetch`'s, given the value it
    /// replaces, which answers the value and when it expires. Callers asking for a key
    /// being fetched wait for that fetch.
    async fn get_or_fetch<F, Fut>(&self, key: &str, now: Instant, fetch: F) -> V
    where
        F: FnOnce(Option<V>) -> Fut,
        Fut: Future<Output = (V, Instant)>,
    {
        let (cell, stale) = {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            let known = entries.get(key).map(|slot| match slot.cell.get() {
                Some(fetched) if fetched.expires > now => Known::Fresh(fetched.value.clone()),
                Some(fetched) => Known::Expired(fetched.value.clone()),
                None => Known::Fetching(slot.cell.clone(), slot.stale.clone()),
            });
            match known {
                Some(Known::Fresh(value)) => return value,
                Some(Known::Fetching(cell, stale)) => (cell, stale),
                Some(Known::Expired(value)) => {
                    let cell = Arc::new(OnceCell::new());
                    entries.insert(key.to_owned(), Slot { cell: cell.clone(), stale: Some(value.clone()) });
                    (cell, Some(value))
                }
                None => {
                    if entries.len() >= self.max {
                        evict(&mut entries, now);
                    }
                    let cell = Arc::new(OnceCell::new());
                    entries.insert(key.to_owned(), Slot { cell: cell.clone(), stale: None });
                    (cell, None)
                }
            }
        };
        let fetched = cell
            .get_or_init(|| async {
                let (value, expires) = fetch(stale).await;
                Fetched { value, expires }
            })
            .await;
        fetched.value.clone()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// Makes room for one entry: expired ones go, else the one closest to expiring (one being
/// fetched counts as expiring now).
fn evict<V>(entries: &mut HashMap<String, Slot<V>>, now: Instant) {
    let expires = |slot: &Slot<V>| slot.cell.get().map_or(now, |f| f.expires);
    let before = entries.len();
    entries.retain(|_, slot| slot.cell.get().is_none_or(|f| f.expires > now));
    if entries.len() < before {
        return;
    }
    if let Some(first) = entries.iter().min_by_key(|(_, slot)| expires(slot)).map(|(key, _)| key.clone()) {
        entries.remove(&first);
    }
}

#[cfg(test)]
mod tests;
