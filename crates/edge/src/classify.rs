//! What a remediation controller reads first on a CR: the incident's environment, its
//! priority (a Rego policy) and its remediation path. Decided at the edge, once per alert,
//! from the alert and the namespace its CR goes to.
//!
//! Environment, first found: the namespace's entry in `edge.classification.environments`
//! (standing in for the namespace's label and the overrides ConfigMap), the alert's
//! `edge.classification.alert_label` label, else `unknown`.

mod policy;

use std::collections::HashMap;
use std::time::Duration;

use breakwater_proto::v1 as pb;

use crate::config::ClassificationConfig;
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

/// Classifies alerts; shared by every request.
#[derive(Debug)]
pub struct Classifier {
    environments: HashMap<String, String>,
    alert_label: String,
    policy: PriorityPolicy,
}

impl Classifier {
    /// # Errors
    /// When the priority policy cannot be read, does not compile or answers no priority.
    pub fn new(config: &ClassificationConfig) -> Result<Self, PolicyError> {
        let policy = PriorityPolicy::load(
            config.priority_policy.clone(),
            Duration::from_millis(config.policy_reload_interval_ms),
        )?;
        Ok(Self { environments: config.environments.clone(), alert_label: config.alert_label.clone(), policy })
    }

    /// The classification of `signal`, whose CR goes to `namespace`.
    pub fn classify(&self, signal: &pb::Signal, namespace: &str) -> Classification {
        let environment = self.environment(signal, namespace);
        let severity = match signal.severity() {
            pb::Severity::Critical => "critical",
            pb::Severity::Warning => "warning",
            pb::Severity::Info => "info",
            pb::Severity::Unspecified => "",
        };
        let input = policy::Input { severity, environment: &environment, namespace, labels: &signal.labels };
        let decision = self.policy.decide(&input);
        let remediation_path =
            decision.remediation_path.unwrap_or_else(|| remediation_path(&environment, decision.priority));
        Classification { environment, priority: decision.priority, remediation_path }
    }

    fn environment(&self, signal: &pb::Signal, namespace: &str) -> String {
        let from_alert = || (!self.alert_label.is_empty()).then(|| signal.labels.get(&self.alert_label)).flatten();
        match self.environments.get(namespace).or_else(from_alert) {
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
