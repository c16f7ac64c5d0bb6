//! What can be configured under `crd_writer`, with the default of every key.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use breakwater_signal::NamespacePolicy;

use crate::crd::is_dns1123_label;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrdWriterConfig {
    /// Where RemediationRequests go: `directory` (YAML files, no cluster needed) or
    /// `kubernetes` (the API server of the current kubeconfig or in-cluster account).
    /// Default `directory`.
    pub sink: SinkKind,
    /// Root of the `directory` sink; CRs land at `<directory>/<namespace>/<name>.yaml`.
    /// Default `./remediations`.
    pub directory: PathBuf,
    /// Namespace for CRs of cluster-scoped signals and of signals whose namespace does not
    /// exist. Default `kubernaut-system`.
    pub fallback_namespace: String,
    /// How often coalesced occurrence and storm counts are written, in ms (1..=60000).
    /// Default 1000.
    pub flush_interval_ms: u64,
    /// How long the last flush at shutdown may take, in ms (1..=300000). Default 10000.
    pub final_flush_timeout_ms: u64,
    /// Most resources listed in a storm CR's `affectedResources`; the rest are counted in
    /// `affectedResourcesOmitted` (1..=1000). Keep it at least the storm service's list cap.
    /// Default 100.
    pub affected_resources_cap: usize,
    /// Most writes accepted in one `WriteRemediations` call (1..=2000000). The edge sends one
    /// call per webhook with up to one write per alert, so keep it at least the alerts a
    /// webhook of `edge.body_limit_bytes` can carry (an alert is at least 3 bytes: `{},`).
    /// Default 200000 (enough for the default 512 KiB body limit).
    pub max_batch: usize,
    /// Retries of Kubernetes requests.
    pub retry: RetryConfig,
    /// Namespaces CRs may be written to: `allow` (empty, the default: any) minus `deny`
    /// (default `["kube-system", "kube-public", "kube-node-lease"]`). A write to another is
    /// refused with `PERMISSION_DENIED`. `fallback_namespace` must be permitted.
    pub namespaces: NamespacePolicy,
}

impl Default for CrdWriterConfig {
    fn default() -> Self {
        Self {
            sink: SinkKind::Directory,
            directory: PathBuf::from("./remediations"),
            fallback_namespace: "kubernaut-system".to_owned(),
            flush_interval_ms: 1000,
            final_flush_timeout_ms: 10_000,
            affected_resources_cap: 100,
            max_batch: 200_000,
            retry: RetryConfig::default(),
            namespaces: NamespacePolicy::default(),
        }
    }
}

/// The backend of the crd-writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    #[default]
    Directory,
    Kubernetes,
}

/// Exponential backoff for Kubernetes requests: `initial_backoff_ms`, doubling, at most
/// `max_backoff_ms`; a 429's `retryAfterSeconds` replaces the backoff of that attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per request, the first included (1..=20). Default 5.
    pub max_attempts: u32,
    /// Pause before the second attempt, in ms (1..=60000). Default 100.
    pub initial_backoff_ms: u64,
    /// Longest pause between attempts, in ms (initial_backoff_ms..=300000). Default 5000.
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self { max_attempts: 5, initial_backoff_ms: 100, max_backoff_ms: 5000 }
    }
}

impl RetryConfig {
    /// Pause after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64.checked_shl(attempt.saturating_sub(1)).unwrap_or(u64::MAX);
        Duration::from_millis(self.initial_backoff_ms.saturating_mul(factor).min(self.max_backoff_ms))
    }
}

impl CrdWriterConfig {
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    pub fn final_flush_timeout(&self) -> Duration {
        Duration::from_millis(self.final_flush_timeout_ms)
    }

    /// Checks every key; the message names the key, the bad value and what is allowed.
    ///
    /// # Errors
    /// The first key out of range.
    pub fn validate(&self) -> Result<(), String> {
        in_range("crd_writer.flush_interval_ms", self.flush_interval_ms, 1, 60_000)?;
        in_range("crd_writer.final_flush_timeout_ms", self.final_flush_timeout_ms, 1, 300_000)?;
        in_range("crd_writer.affected_resources_cap", self.affected_resources_cap as u64, 1, 1000)?;
        in_range("crd_writer.max_batch", self.max_batch as u64, 1, 2_000_000)?;
        if !is_dns1123_label(&self.fallback_namespace) {
            return Err(format!(
                "crd_writer.fallback_namespace = {:?} is not allowed: use a namespace name \
                 (lower-case letters, digits and '-', at most 63)",
                self.fallback_namespace
            ));
        }
        self.namespaces.validate("crd_writer.namespaces")?;
        if !self.namespaces.permits(&self.fallback_namespace) {
            return Err(format!(
                "crd_writer.fallback_namespace = {:?} is not permitted by crd_writer.namespaces: \
                 allow it, or choose another fallback namespace",
                self.fallback_namespace
            ));
        }
        if self.sink == SinkKind::Directory && self.directory.as_os_str().is_empty() {
            return Err("crd_writer.directory = \"\" is not allowed: use a directory path".to_owned());
        }
        let retry = &self.retry;
        in_range("crd_writer.retry.max_attempts", u64::from(retry.max_attempts), 1, 20)?;
        in_range("crd_writer.retry.initial_backoff_ms", retry.initial_backoff_ms, 1, 60_000)?;
        in_range("crd_writer.retry.max_backoff_ms", retry.max_backoff_ms, retry.initial_backoff_ms, 300_000)
            .map_err(|e| format!("{e} (at least crd_writer.retry.initial_backoff_ms)"))?;
        Ok(())
    }
}

fn in_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{key} = {value} is not allowed: use {min}..={max}"))
    }
}

#[cfg(test)]
mod tests;
