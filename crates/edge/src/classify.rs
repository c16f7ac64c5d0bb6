//! What a remediation controller reads first on a CR: the incident's environment, its
//! priority (a Rego policy) and its remediation path. Decided at the edge, once per alert,
//! from the alert and the namespace its CR goes to.
//!
//! Environment, first found:
//! 1. the namespace's `edge.classification.namespace_label` label, and
//! 2. its entry in the `edge.classification.overrides_configmap` ConfigMap, both read from
//!    the API server through a cache ([`KubernetesEnvironments`]); or, with
//!    `namespace_source = "table"` (no cluster), its entry in `edge.classification.environments`
//!    in place of both;
//! 3. the alert's `edge.classification.alert_label` label;
//! 4. else `unknown`.
//!
//! The namespaces of a batch are looked up together ([`Classifier::namespace_environments`]) before its
//! alerts are classified one by one, without I/O ([`Classifier::classify`]).

mod kubernetes;
mod policy;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_proto::v1 as pb;
use breakwater_signal::Layered;

use crate::config::ClassificationConfig;
pub use kubernetes::KubernetesEnvironments;
pub use policy::{DEFAULT_POLICY, PolicyError, PriorityPolicy};

/// Remediation paths, from the most to the least automatic.
pub const REMEDIATION_PATHS: [&str; 4] = ["aggressive", "moderate", "conservative", "manual"];

/// An environment longer than this is cut (a label value's limit).
const ENVIRONMENT_MAX_CHARS: usize = 63;

/// One alert's classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub environment: String,
    /// `P0`..`P3`.
    pub priority: &'static str,
    /// One of [`REMEDIATION_PATHS`].
    pub remediation_path: &'static str,
}

/// Where a namespace's environment is read before the alert's label.
#[derive(Debug)]
pub enum Namespaces {
    /// `edge.classification.environments`.
    Table(HashMap<String, Arc<str>>),
    /// The namespace's label, then the overrides ConfigMap.
    Kubernetes(Box<KubernetesEnvironments>),
}

impl Namespaces {
    /// `edge.classification.environments`.
    pub fn table(config: &ClassificationConfig) -> Self {
        Self::Table(config.environments.iter().map(|(ns, env)| (ns.clone(), Arc::from(env.as_str()))).collect())
    }

    /// Namespace labels and the overrides ConfigMap, read through `client`.
    pub fn kubernetes(client: kube::Client, config: &ClassificationConfig) -> Self {
        Self::Kubernetes(Box::new(KubernetesEnvironments::new(client, config)))
    }
}

/// The environments the namespaces of one batch have (sources 1 and 2).
#[derive(Debug)]
pub enum NamespaceEnvironments<'a> {
    Table(&'a HashMap<String, Arc<str>>),
    /// By namespace, sorted.
    Looked(Vec<(String, Option<Arc<str>>)>),
}

impl NamespaceEnvironments<'_> {
    /// The environment of `namespace`, when its namespace sources name one.
    pub fn get(&self, namespace: &str) -> Option<&str> {
        match self {
            Self::Table(table) => table.get(namespace).map(|env| &**env),
            Self::Looked(looked) => {
                let at = looked.binary_search_by(|(ns, _)| ns.as_str().cmp(namespace)).ok()?;
                looked[at].1.as_deref()
            }
        }
    }
}

/// Classifies alerts; shared by every request.
#[derive(Debug)]
pub struct Classifier {
    namespaces: Namespaces,
    alert_label: String,
    policy: PriorityPolicy,
}

impl Classifier {
    /// # Errors
    /// When the priority policy cannot be read, does not compile or answers no priority.
    pub fn new(config: &ClassificationConfig, namespaces: Namespaces) -> Result<Self, PolicyError> {
        let policy = PriorityPolicy::load(
            config.priority_policy.clone(),
            Duration::from_millis(config.policy_reload_interval_ms),
        )?;
        Ok(Self { namespaces, alert_label: config.alert_label.clone(), policy })
    }

    /// The environments of `namespaces` (the CRs' namespaces of one batch, repeats allowed)
    /// from their namespace sources, all looked up at once.
    pub async fn namespace_environments(&self, namespaces: &[&str]) -> NamespaceEnvironments<'_> {
        self.namespaces_at(namespaces, Instant::now()).await
    }

    async fn namespaces_at(&self, namespaces: &[&str], now: Instant) -> NamespaceEnvironments<'_> {
        match &self.namespaces {
            Namespaces::Table(table) => NamespaceEnvironments::Table(table),
            Namespaces::Kubernetes(_) if namespaces.is_empty() => NamespaceEnvironments::Looked(Vec::new()),
            Namespaces::Kubernetes(kubernetes) => {
                let mut distinct = namespaces.to_vec();
                distinct.sort_unstable();
                distinct.dedup();
                NamespaceEnvironments::Looked(kubernetes.resolve(&distinct, now).await)
            }
        }
    }

    /// The classification of `signal`, which also has the `shared` labels of its batch, whose
    /// CR goes to `namespace`, whose environment `namespaces` has (from
    /// [`Classifier::namespace_environments`]).
    pub fn classify(
        &self,
        signal: &pb::Signal,
        shared: &HashMap<String, String>,
        namespace: &str,
        namespaces: &NamespaceEnvironments<'_>,
    ) -> Classification {
        let labels = Layered::new(&signal.labels, shared);
        let environment = self.environment(labels, namespaces.get(namespace));
        let severity = match signal.severity() {
            pb::Severity::Critical => "critical",
            pb::Severity::Warning => "warning",
            pb::Severity::Info => "info",
            pb::Severity::Unspecified => "",
        };
        let input = policy::Input { severity, environment: &environment, namespace, labels };
        let decision = self.policy.decide(&input);
        let remediation_path =
            decision.remediation_path.unwrap_or_else(|| remediation_path(&environment, decision.priority));
        Classification { environment, priority: decision.priority, remediation_path }
    }

    fn environment(&self, labels: Layered<'_>, from_namespace: Option<&str>) -> String {
        let from_alert = || (!self.alert_label.is_empty()).then(|| labels.get(&self.alert_label)).flatten();
        match from_namespace.or_else(from_alert) {
            Some(env) if !env.is_empty() => env.chars().take(ENVIRONMENT_MAX_CHARS).collect(),
            _ => "unknown".to_owned(),
        }
    }
}

/// The reference gateway's table (spec §6.3), by environment then priority; a priority
/// outside P0..P2 is `manual`.
fn remediation_path(environment: &str, priority: &str) -> &'static str {
    let row: [&'static str; 3] = match environment {
        "production" => ["aggressive", "conservative", "conservative"],
        "staging" => ["moderate", "moderate", "manual"],
        "development" => ["aggressive", "moderate", "manual"],
        "unknown" | "" => ["conservative", "conservative", "conservative"],
        _ => ["moderate", "moderate", "conservative"],
    };
    match priority {
        "P0" => row[0],
        "P1" => row[1],
        "P2" => row[2],
        _ => "manual",
    }
}

#[cfg(test)]
mod tests;
