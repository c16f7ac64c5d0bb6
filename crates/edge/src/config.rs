//! Edge settings (`[edge]` in the config file).

use std::path::PathBuf;

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
    /// Webhooks processed at once (after their body is read); more are shed
    /// with 503. Probes and `/metrics` are never counted. Default 512.
    pub max_concurrent_requests: usize,
    /// Time allowed for a request's headers, counted from when the edge starts
    /// waiting for it (the connection opened, or the previous answer was sent),
    /// so it is also the keep-alive idle timeout. Default 10 000.
    pub header_read_timeout_ms: u64,
    /// Time allowed to read a whole request body; past it the sender gets 408
    /// and the connection is closed. At the default body limit that asks for
    /// at least 52 KB/s. Default 10 000.
    pub body_read_timeout_ms: u64,
    /// Open connections; past it the oldest connection with no request in
    /// progress is closed to make room. Keep it under the process's file
    /// limit (`ulimit -n`). Default 1 024.
    pub max_connections: usize,
    /// Connections accepted over `max_connections` when none can be closed;
    /// they serve only `/healthz`, `/readyz` and `/metrics`, so probes get
    /// through a flood. Default 32.
    pub probe_connections: usize,
    /// Largest body after `Content-Encoding: gzip` is decoded; larger gets
    /// 413. Default 512 KiB.
    pub decoded_body_limit_bytes: usize,
    /// A label value longer than this many bytes is cut to it; the signal's CR lists it in
    /// its `kubernaut.io/truncated` annotation. Default 4 096.
    pub max_label_value_bytes: usize,
    /// The same for an annotation value. Default 32 768.
    pub max_annotation_value_bytes: usize,
    /// A webhook whose signals would take more than this many bytes, once every alert has
    /// its copy of the common labels and annotations, gets 413. Default 8 MiB.
    pub max_webhook_expanded_bytes: usize,
    /// Bytes of webhooks in progress (body, signals and their copies on the way through
    /// the components); a webhook that would go over gets 503 with `Retry-After`.
    /// Default 64 MiB.
    pub max_in_flight_bytes: usize,
    /// On SIGTERM, time for in-flight requests to finish before their
    /// connections are closed. Default 10 000.
    pub shutdown_timeout_ms: u64,
    /// Deadline of each gRPC call to a component. Default 2 000.
    pub component_timeout_ms: u64,
    /// How incidents are identified; default: alertname, namespace, resource kind and name.
    pub fingerprint: FingerprintRule,
    /// Namespace for the CRs of signals without one (cluster-scoped objects, alerts
    /// without any of `namespace_labels`); their CRs carry the labels
    /// `kubernaut.io/origin-namespace` and `kubernaut.io/cluster-scoped`. Default
    /// `kubernaut-system`.
    pub fallback_namespace: String,
    /// Where CRs may land: `allow` (empty: any) and `deny` (default
    /// `kube-system`, `kube-public`, `kube-node-lease`). An alert whose CR would
    /// go to a namespace not permitted is rejected in its result. Keep it in step
    /// with `crd_writer.namespaces`, which checks again.
    pub namespaces: breakwater_signal::NamespacePolicy,
    /// The alert labels that name its namespace, first present wins. Default
    /// `["namespace", "exported_namespace"]`; alerts from kube-state-metrics name the
    /// subject's namespace in `exported_namespace` (and their exporter's in `namespace`),
    /// so put it first for them.
    pub namespace_labels: Vec<String>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed: a request from one
    /// is from the right-most hop that is not one of them. Hops further left
    /// are whatever the client wrote, so they never name the sender. Default
    /// none: the sender is the peer address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// When dedup is unreachable, new CRs are named per window of this length
    /// (seconds) so Kubernetes' AlreadyExists still dedups. Default 300.
    pub dedup_fallback_window_secs: u64,
    /// Environment, priority and remediation path of each alert (`[edge.classification]`).
    pub classification: ClassificationConfig,
    /// Status of a webhook over its sender's rate, per route: 503 (default:
    /// Alertmanager retries it, so nothing is lost) or 429 (Alertmanager drops
    /// the notification). Both carry `Retry-After`.
    pub rate_limited_status: RateLimitedStatus,
    /// Where the components listen (`http://host:port`, or several
    /// comma-separated; a host name stands for every address it resolves to).
    /// `breakwater up` fills these with its in-process servers.
    pub components: ComponentUrls,
    /// Who may post webhooks (`[edge.auth]`); probes and `/metrics` stay open.
    pub auth: AuthConfig,
}

/// Authentication of the webhook routes (`[edge.auth]`): a bearer token in
/// `Authorization: Bearer <token>`, as Alertmanager's `http_config.authorization`
/// sends it. Probes (`/healthz`, `/readyz`, `/health`, `/ready`) and `/metrics`
/// are never authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `none` (anyone who reaches the port may post), `static` (a token of
    /// `token_files`) or `kubernetes` (TokenReview, then SubjectAccessReview).
    /// Unset: none, but only while the edge listens on a loopback address;
    /// start-up refuses any other address until a mode is set.
    pub mode: Option<AuthMode>,
    /// With `static`: files holding one token each (the token name is the file
    /// name), or directories whose every file is one (a mounted Secret). The
    /// token is the file's content without surrounding whitespace. Read at
    /// start-up (a missing or empty file fails it) and again every
    /// `token_reload_secs`. Default none.
    pub token_files: Vec<PathBuf>,
    /// How often `token_files` are read again, so a rotated Secret takes
    /// effect without a restart; a read that fails keeps the tokens it had.
    /// Default 30.
    pub token_reload_secs: u64,
    /// With `kubernetes`: the review the caller's token and identity go through.
    pub kubernetes: KubernetesAuthConfig,
}

/// How webhooks are authenticated (`edge.auth.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    None,
    Static,
    Kubernetes,
}

/// `[edge.auth.kubernetes]`: the token is checked with a TokenReview, and the
/// identity it names must be allowed `verb` on `resource` by a
/// SubjectAccessReview (the edge's account needs `create` on both, see
/// `deploy/kustomize/base/auth-delegator-role.yaml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesAuthConfig {
    /// Kubeconfig of the API server to ask. Unset: `KUBECONFIG`, then
    /// `~/.kube/config`, then the pod's service account.
    pub kubeconfig: Option<PathBuf>,
    /// The SubjectAccessReview asks whether the caller may `verb` …
    /// Default `create`.
    pub verb: String,
    /// … `resource` of API group `group` … Defaults `remediationrequests`,
    /// `remediation.kubernaut.io`: callers need what creating a
    /// RemediationRequest needs.
    pub resource: String,
    pub group: String,
    /// … in this namespace; empty: in every namespace (a ClusterRoleBinding).
    /// Default empty.
    pub namespace: String,
    /// How long an allowed token is remembered, so a webhook does not cost two
    /// API calls; 0 asks every time. Default 60.
    pub cache_ttl_secs: u64,
    /// How long a refused token (401 or 403) is remembered. Default 10.
    pub denied_cache_ttl_secs: u64,
    /// Tokens remembered at most; past it expired entries, then the oldest,
    /// are forgotten. Default 4 096.
    pub cache_max_entries: usize,
    /// Deadline of each review call; past it, or on any API error, the sender
    /// gets 503 (retryable), never 401. Default 2 000.
    pub timeout_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { mode: None, token_files: Vec::new(), token_reload_secs: 30, kubernetes: KubernetesAuthConfig::default() }
    }
}

impl Default for KubernetesAuthConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            verb: "create".into(),
            resource: "remediationrequests".into(),
            group: "remediation.kubernaut.io".into(),
            namespace: String::new(),
            cache_ttl_secs: 60,
            denied_cache_ttl_secs: 10,
            cache_max_entries: 4096,
            timeout_ms: 2_000,
        }
    }
}

impl AuthConfig {
    /// Refuses an unauthenticated edge on an address other hosts can reach:
    /// `mode` unset is allowed only on loopback. `key` names where `addr`
    /// came from (`listen.edge`, `--listen`) for the message.
    ///
    /// # Errors
    /// A sentence naming `key`, `edge.auth.mode` and the values to choose from.
    pub fn check_listen(&self, addr: std::net::SocketAddr, key: &str) -> Result<(), String> {
        if self.mode.is_some() || addr.ip().is_loopback() {
            return Ok(());
        }
        Err(format!(
            "{key} = {addr} is not a loopback address and edge.auth.mode is not set: set edge.auth.mode = \
             \"static\" or \"kubernetes\" to authenticate webhooks, or \"none\" to accept them from anyone \
             who can reach the port"
        ))
    }

    fn validate(&self) -> Result<(), String> {
        if self.mode == Some(AuthMode::Static) && self.token_files.is_empty() {
            return Err("edge.auth.mode = \"static\" needs edge.auth.token_files: list a file or directory".into());
        }
        if self.mode != Some(AuthMode::Static) && !self.token_files.is_empty() {
            return Err(
                "edge.auth.token_files is set but edge.auth.mode is not \"static\": set the mode, or the tokens \
                 would not be checked"
                    .into(),
            );
        }
        if self.token_files.iter().any(|p| p.as_os_str().is_empty()) {
            return Err("edge.auth.token_files has an empty path: use a file or directory path".into());
        }
        if !(1..=3600).contains(&self.token_reload_secs) {
            return Err(format!(
                "edge.auth.token_reload_secs = {} is not allowed: use 1..=3600",
                self.token_reload_secs
            ));
        }
        let k = &self.kubernetes;
        if k.kubeconfig.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(
                "edge.auth.kubernetes.kubeconfig = \"\" is not allowed: use a file path, or leave it unset".into()
            );
        }
        for (key, value) in [("verb", &k.verb), ("resource", &k.resource)] {
            if value.is_empty() {
                return Err(format!("edge.auth.kubernetes.{key} = \"\" is not allowed: name one"));
            }
        }
        for (key, value) in [("cache_ttl_secs", k.cache_ttl_secs), ("denied_cache_ttl_secs", k.denied_cache_ttl_secs)] {
            if value > 3600 {
                return Err(format!("edge.auth.kubernetes.{key} = {value} is not allowed: use 0..=3600"));
            }
        }
        if !(1..=1_000_000).contains(&k.cache_max_entries) {
            return Err(format!(
                "edge.auth.kubernetes.cache_max_entries = {} is not allowed: use 1..=1000000",
                k.cache_max_entries
            ));
        }
        if !(100..=60_000).contains(&k.timeout_ms) {
            return Err(format!("edge.auth.kubernetes.timeout_ms = {} is not allowed: use 100..=60000", k.timeout_ms));
        }
        Ok(())
    }
}

/// How alerts are classified (`[edge.classification]`); see [`crate::classify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassificationConfig {
    /// Where a namespace's environment is read first: `table` (`environments`, for a
    /// gateway without a cluster) or `kubernetes` (the namespace's `namespace_label`, then
    /// the `overrides_configmap`, from the API server). Default `table`.
    pub namespace_source: NamespaceSource,
    /// With `table`: environment by namespace (the namespace a CR goes to), e.g.
    /// `{ shop = "production" }`. Default empty.
    pub environments: std::collections::HashMap<String, String>,
    /// With `kubernetes`: the namespace label naming its environment. Default
    /// `environment`.
    pub namespace_label: String,
    /// With `kubernetes`: the ConfigMap `namespace/name` read for a namespace without the
    /// label (key: namespace name, value: environment); empty: none. Default
    /// `kubernaut-system/kubernaut-environment-overrides`.
    pub overrides_configmap: String,
    /// With `kubernetes`: how long a namespace's label and the ConfigMap are remembered,
    /// so alerts cost no API call. Default 30.
    pub cache_ttl_secs: u64,
    /// With `kubernetes`: namespaces remembered at most. Default 4 096.
    pub cache_max_entries: usize,
    /// With `kubernetes`: deadline of each lookup; past it, or on an API error, the next
    /// source answers. Default 1 000.
    pub lookup_timeout_ms: u64,
    /// With `kubernetes`: kubeconfig of the API server to ask. Unset: `KUBECONFIG`, then
    /// `~/.kube/config`, then the pod's service account.
    pub kubeconfig: Option<PathBuf>,
    /// The alert label read next; empty: none. Default `environment`.
    pub alert_label: String,
    /// A Rego file answering `data.kubernaut.gateway.priority.priority` (P0..P3)
    /// and optionally `remediation_path`; unset: the built-in policy (the
    /// reference gateway's). One that does not compile stops start-up.
    pub priority_policy: Option<std::path::PathBuf>,
    /// How often the policy file is checked for a change. Default 5 000.
    pub policy_reload_interval_ms: u64,
}

/// Where a namespace's environment is read first (`edge.classification.namespace_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceSource {
    Table,
    Kubernetes,
}

impl Default for ClassificationConfig {
    fn default() -> Self {
        Self {
            namespace_source: NamespaceSource::Table,
            environments: std::collections::HashMap::new(),
            namespace_label: "environment".into(),
            overrides_configmap: "kubernaut-system/kubernaut-environment-overrides".into(),
            cache_ttl_secs: 30,
            cache_max_entries: 4096,
            lookup_timeout_ms: 1_000,
            kubeconfig: None,
            alert_label: "environment".into(),
            priority_policy: None,
            policy_reload_interval_ms: 5_000,
        }
    }
}

impl ClassificationConfig {
    /// The overrides ConfigMap as (namespace, name); `None` when `overrides_configmap` is
    /// empty or not `namespace/name`.
    pub fn overrides(&self) -> Option<(&str, &str)> {
        self.overrides_configmap.split_once('/')
    }

    fn validate(&self) -> Result<(), String> {
        if !(100..=3_600_000).contains(&self.policy_reload_interval_ms) {
            return Err(format!(
                "edge.classification.policy_reload_interval_ms = {} is not allowed: use 100..=3600000",
                self.policy_reload_interval_ms
            ));
        }
        if let Some((ns, _)) = self.environments.iter().find(|(ns, _)| !is_dns1123_label(ns)) {
            return Err(format!("edge.classification.environments: {ns:?} is not a namespace name"));
        }
        if self.namespace_source == NamespaceSource::Kubernetes && !self.environments.is_empty() {
            return Err("edge.classification.environments is set but namespace_source = \"kubernetes\" reads \
                 namespaces from the API server: move the entries to namespace labels or the overrides \
                 ConfigMap, or set namespace_source = \"table\""
                .into());
        }
        if self.namespace_label.is_empty() {
            return Err("edge.classification.namespace_label = \"\" is not allowed: name a label".into());
        }
        let valid_configmap = self.overrides().is_some_and(|(ns, name)| {
            is_dns1123_label(ns)
                && !name.is_empty()
                && name.len() <= 253
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        });
        if !self.overrides_configmap.is_empty() && !valid_configmap {
            return Err(format!(
                "edge.classification.overrides_configmap = {:?} is not allowed: use \"namespace/name\" of a \
                 ConfigMap, or \"\" for none",
                self.overrides_configmap
            ));
        }
        if !(1..=3600).contains(&self.cache_ttl_secs) {
            return Err(format!(
                "edge.classification.cache_ttl_secs = {} is not allowed: use 1..=3600",
                self.cache_ttl_secs
            ));
        }
        if !(1..=1_000_000).contains(&self.cache_max_entries) {
            return Err(format!(
                "edge.classification.cache_max_entries = {} is not allowed: use 1..=1000000",
                self.cache_max_entries
            ));
        }
        if !(10..=60_000).contains(&self.lookup_timeout_ms) {
            return Err(format!(
                "edge.classification.lookup_timeout_ms = {} is not allowed: use 10..=60000",
                self.lookup_timeout_ms
            ));
        }
        if self.kubeconfig.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(
                "edge.classification.kubeconfig = \"\" is not allowed: use a file path, or leave it unset".into()
            );
        }
        Ok(())
    }
}

/// The status of an over-rate webhook, per route (`[edge.rate_limited_status]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitedStatus {
    /// `/api/v1/signals/prometheus`. Default 503.
    pub prometheus: u16,
    /// `/api/v1/signals/kubernetes-event`. Default 503.
    pub kubernetes_event: u16,
}

impl Default for RateLimitedStatus {
    fn default() -> Self {
        Self { prometheus: 503, kubernetes_event: 503 }
    }
}

impl RateLimitedStatus {
    /// The status for webhooks of `source` (an adapter's `SOURCE_TYPE`).
    pub fn for_source(&self, source: &str) -> u16 {
        if source == crate::adapters::kubernetes_event::SOURCE_TYPE { self.kubernetes_event } else { self.prometheus }
    }

    fn validate(&self) -> Result<(), String> {
        for (key, status) in [("prometheus", self.prometheus), ("kubernetes_event", self.kubernetes_event)] {
            if status != 429 && status != 503 {
                return Err(format!(
                    "edge.rate_limited_status.{key} = {status} is not allowed: use 503 (the sender retries) or 429"
                ));
            }
        }
        Ok(())
    }
}

/// gRPC endpoints of the components the edge calls. Each is a URL, or a
/// comma-separated list of the component's replicas; a host name stands for
/// every address it resolves to (a headless Service: one per ready pod). Calls
/// go round-robin over all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComponentUrls {
    pub ratelimit: String,
    pub dedup: String,
    pub storm: String,
    pub crd_writer: String,
    /// How often host names are looked up again, so replicas that come and
    /// go are followed. Default 5 000.
    pub resolve_interval_ms: u64,
    /// PEM CA bundle that signed the components' certificates; `https://`
    /// URLs need it. Unset: plain HTTP/2.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key the edge presents, for components that
    /// require mutual TLS (`tls.client_ca_file`). Unset: none.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

impl ComponentUrls {
    /// The TLS the edge's clients use.
    pub fn tls(&self) -> breakwater_grpc::tls::ClientTls {
        breakwater_grpc::tls::ClientTls {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

impl Default for ComponentUrls {
    fn default() -> Self {
        Self {
            ratelimit: "http://127.0.0.1:9101".into(),
            dedup: "http://127.0.0.1:9102".into(),
            storm: "http://127.0.0.1:9103".into(),
            crd_writer: "http://127.0.0.1:9104".into(),
            resolve_interval_ms: 5_000,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 512 * 1024,
            request_timeout_ms: 10_000,
            max_concurrent_requests: 512,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            max_connections: 1024,
            probe_connections: 32,
            decoded_body_limit_bytes: 512 * 1024,
            max_label_value_bytes: 4096,
            max_annotation_value_bytes: 32 * 1024,
            max_webhook_expanded_bytes: 8 * 1024 * 1024,
            max_in_flight_bytes: 64 * 1024 * 1024,
            shutdown_timeout_ms: 10_000,
            component_timeout_ms: 2_000,
            fingerprint: FingerprintRule::Resource,
            fallback_namespace: "kubernaut-system".into(),
            namespace_labels: crate::adapters::prometheus::DEFAULT_NAMESPACE_LABELS.map(str::to_owned).to_vec(),
            namespaces: breakwater_signal::NamespacePolicy::default(),
            trusted_proxies: Vec::new(),
            dedup_fallback_window_secs: 300,
            rate_limited_status: RateLimitedStatus::default(),
            classification: ClassificationConfig::default(),
            components: ComponentUrls::default(),
            auth: AuthConfig::default(),
        }
    }
}

impl EdgeConfig {
    /// The adapters' caps from these settings.
    pub fn caps(&self) -> crate::adapters::Caps {
        crate::adapters::Caps {
            label_value_bytes: self.max_label_value_bytes,
            annotation_value_bytes: self.max_annotation_value_bytes,
            expanded_bytes: self.max_webhook_expanded_bytes,
        }
    }

    /// # Errors
    /// A sentence naming the key, the bad value and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        self.rate_limited_status.validate()?;
        self.classification.validate()?;
        self.auth.validate()?;
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
        for (key, value) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("shutdown_timeout_ms", self.shutdown_timeout_ms),
        ] {
            if !(100..=300_000).contains(&value) {
                return Err(format!("edge.{key} = {value} is not allowed: use 100..=300000"));
            }
        }
        if self.max_connections == 0 {
            return Err("edge.max_connections = 0 is not allowed: use 1 or more".into());
        }
        if self.probe_connections == 0 {
            return Err("edge.probe_connections = 0 is not allowed: use 1 or more, so probes get through".into());
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.decoded_body_limit_bytes) {
            return Err(format!(
                "edge.decoded_body_limit_bytes = {} is not allowed: use 1024..=67108864",
                self.decoded_body_limit_bytes
            ));
        }
        for (key, value, range) in [
            ("max_label_value_bytes", self.max_label_value_bytes, 63..=1024 * 1024),
            ("max_annotation_value_bytes", self.max_annotation_value_bytes, 256..=262_000),
            ("max_webhook_expanded_bytes", self.max_webhook_expanded_bytes, 64 * 1024..=1024 * 1024 * 1024),
            ("max_in_flight_bytes", self.max_in_flight_bytes, 1024 * 1024..=16 * 1024 * 1024 * 1024),
        ] {
            if !range.contains(&value) {
                return Err(format!("edge.{key} = {value} is not allowed: use {}..={}", range.start(), range.end()));
            }
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
        self.namespaces.validate("edge.namespaces")?;
        if !self.namespaces.permits(&self.fallback_namespace) {
            return Err(format!(
                "edge.fallback_namespace = {:?} is not permitted by edge.namespaces: alerts without a namespace could never be recorded",
                self.fallback_namespace
            ));
        }
        if self.namespace_labels.is_empty() || self.namespace_labels.iter().any(|l| l.is_empty()) {
            return Err(format!(
                "edge.namespace_labels = {:?} is not allowed: list at least one label name, none empty",
                self.namespace_labels
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
            let replicas: Vec<&str> = url.split(',').map(str::trim).collect();
            if replicas.iter().any(|u| !valid_component_url(u)) {
                return Err(format!(
                    "edge.components.{key} = {url:?} is not allowed: use http://host:port, or several separated by commas"
                ));
            }
        }
        let urls =
            [&self.components.ratelimit, &self.components.dedup, &self.components.storm, &self.components.crd_writer];
        let any_https = urls.iter().flat_map(|u| u.split(',')).any(|u| u.trim().starts_with("https://"));
        let any_http = urls.iter().flat_map(|u| u.split(',')).any(|u| u.trim().starts_with("http://"));
        self.components.tls().validate("edge.components", any_https, any_http)?;
        if !(100..=3_600_000).contains(&self.components.resolve_interval_ms) {
            return Err(format!(
                "edge.components.resolve_interval_ms = {} is not allowed: use 100..=3600000",
                self.components.resolve_interval_ms
            ));
        }
        Ok(())
    }
}

/// `http://host:port` (or `https://`), with a host and nothing after the port.
fn valid_component_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else { return false };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.host().is_some_and(|h| !h.is_empty())
        && uri.path_and_query().is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty())
}
