//! Edge settings (`[edge]` in the config file).

use breakwater_signal::{FingerprintRule, is_dns1123_label};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Largest accepted request body; larger gets 413. Default 512 KiB
    /// (leaves room under etcd's 1.5 MB object limit, DD-GATEWAY-001).
    pub body_limit_bytes: usize,
    /// Whole-request deadline; past it the sender gets 504. Default 10 000.
    pub request_timeout_ms: u64,
    /// Requests processed at once; more are shed with 503. Default 512.
    pub max_concurrent_requests: usize,
    /// Deadline of each gRPC call to a component. Default 2 000.
    pub component_timeout_ms: u64,
    /// How incidents are identified; default: alertname, namespace, resource kind and name.
    pub fingerprint: FingerprintRule,
    /// Namespace for the CRs of cluster-scoped signals. Default `kubernaut-system`.
    pub fallback_namespace: String,
    /// Take the sender from the first `X-Forwarded-For` hop instead of the peer
    /// address. Enable only behind a proxy that sets it. Default false.
    pub trust_forwarded_for: bool,
    /// When dedup is unreachable, new CRs are named per window of this length
    /// (seconds) so Kubernetes' AlreadyExists still dedups. Default 300.
    pub dedup_fallback_window_secs: u64,
    /// Where the components listen (`http://host:port`). `breakwater up` fills
    /// these with its in-process servers.
    pub components: ComponentUrls,
}

/// gRPC endpoints of the components the edge calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComponentUrls {
    pub ratelimit: String,
    pub dedup: String,
    pub storm: String,
    pub crd_writer: String,
}

impl Default for ComponentUrls {
    fn default() -> Self {
        Self {
            ratelimit: "http://127.0.0.1:9101".into(),
            dedup: "http://127.0.0.1:9102".into(),
            storm: "http://127.0.0.1:9103".into(),
            crd_writer: "http://127.0.0.1:9104".into(),
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 512 * 1024,
            request_timeout_ms: 10_000,
            max_concurrent_requests: 512,
            component_timeout_ms: 2_000,
            fingerprint: FingerprintRule::Resource,
            fallback_namespace: "kubernaut-system".into(),
            trust_forwarded_for: false,
            dedup_fallback_window_secs: 300,
            components: ComponentUrls::default(),
        }
    }
}

impl EdgeConfig {
    /// # Errors
    /// A sentence naming the key, the bad value and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if !(1024..=16 * 1024 * 1024).contains(&self.body_limit_bytes) {
            return Err(format!(
                "edge.body_limit_bytes = {} is not allowed: use 1024..=16777216",
                self.body_limit_bytes
            ));
        }
        if !(100..=300_000).contains(&self.request_timeout_ms) {
            return Err(format!(
                "edge.request_timeout_ms = {} is not allowed: use 100..=300000",
                self.request_timeout_ms
            ));
        }
        if self.max_concurrent_requests == 0 {
            return Err("edge.max_concurrent_requests = 0 is not allowed: use 1 or more".into());
        }
        if !(10..=60_000).contains(&self.component_timeout_ms) {
            return Err(format!(
                "edge.component_timeout_ms = {} is not allowed: use 10..=60000",
                self.component_timeout_ms
            ));
        }
        if !is_dns1123_label(&self.fallback_namespace) {
            return Err(format!(
                "edge.fallback_namespace = {:?} is not allowed: use a Kubernetes namespace name (lower-case letters, digits, '-', at most 63)",
                self.fallback_namespace
            ));
        }
        if let FingerprintRule::Labels(labels) = &self.fingerprint
            && labels.is_empty()
        {
            return Err("edge.fingerprint.labels = [] is not allowed: list at least one label name".into());
        }
        if !(1..=86_400).contains(&self.dedup_fallback_window_secs) {
            return Err(format!(
                "edge.dedup_fallback_window_secs = {} is not allowed: use 1..=86400",
                self.dedup_fallback_window_secs
            ));
        }
        for (key, url) in [
            ("ratelimit", &self.components.ratelimit),
            ("dedup", &self.components.dedup),
            ("storm", &self.components.storm),
            ("crd_writer", &self.components.crd_writer),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("edge.components.{key} = {url:?} is not allowed: use http://host:port"));
            }
        }
        Ok(())
    }
}
