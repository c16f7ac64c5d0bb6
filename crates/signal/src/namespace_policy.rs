//! Which namespaces may receive RemediationRequests: an allow list (empty: any) and a deny
//! list that wins over it. crd-writer enforces it on every write (`crd_writer.namespaces`);
//! the edge can use the same lists to answer earlier.

use serde::{Deserialize, Serialize};

use crate::names::is_dns1123_label;

/// The namespaces that are never written to by default: the cluster's own.
pub const DEFAULT_DENIED_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// `allow` (empty: every namespace) minus `deny`. Names match exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespacePolicy {
    /// Only these namespaces may be written to; empty (the default) allows any.
    pub allow: Vec<String>,
    /// These namespaces are never written to, even when `allow` lists them. Default:
    /// `["kube-system", "kube-public", "kube-node-lease"]`.
    pub deny: Vec<String>,
}

impl Default for NamespacePolicy {
    fn default() -> Self {
        Self { allow: Vec::new(), deny: DEFAULT_DENIED_NAMESPACES.map(str::to_owned).to_vec() }
    }
}

impl NamespacePolicy {
    /// A policy that permits every namespace (for tests and callers that check elsewhere).
    pub fn permit_all() -> Self {
        Self { allow: Vec::new(), deny: Vec::new() }
    }

    /// Whether a RemediationRequest may be written to `namespace`.
    pub fn permits(&self, namespace: &str) -> bool {
        let allowed = self.allow.is_empty() || self.allow.iter().any(|a| a == namespace);
        allowed && !self.deny.iter().any(|d| d == namespace)
    }

    /// Checks that every listed name is a namespace name; `key` is the config key of the
    /// policy (e.g. `crd_writer.namespaces`), for the message.
    ///
    /// # Errors
    /// A sentence naming the key, the bad value and what is allowed.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        for (list, names) in [("allow", &self.allow), ("deny", &self.deny)] {
            if let Some(bad) = names.iter().find(|n| !is_dns1123_label(n)) {
                return Err(format!(
                    "{key}.{list} contains {bad:?}, which is not allowed: list namespace names \
                     (lower-case letters, digits and '-', at most 63)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denies_the_cluster_namespaces_by_default_and_allows_the_rest() {
        let policy = NamespacePolicy::default();
        for ns in DEFAULT_DENIED_NAMESPACES {
            assert!(!policy.permits(ns), "{ns}");
        }
        assert!(policy.permits("default"));
        assert!(policy.permits("team-a"));
        assert!(NamespacePolicy::permit_all().permits("kube-system"));
    }

    #[test]
    fn an_allow_list_limits_and_deny_wins_over_it() {
        let policy =
            NamespacePolicy { allow: vec!["team-a".into(), "kube-system".into()], deny: vec!["kube-system".into()] };
        assert!(policy.permits("team-a"));
        assert!(!policy.permits("team-b"));
        assert!(!policy.permits("kube-system"));
        // Exact names only: no prefixes, no case folding.
        assert!(!policy.permits("team-a-2"));
        assert!(!policy.permits("Team-A"));
    }

    #[test]
    fn validation_names_the_key_and_the_bad_name() {
        assert_eq!(NamespacePolicy::default().validate("crd_writer.namespaces"), Ok(()));
        let bad = NamespacePolicy { allow: vec!["Team_A".into()], deny: Vec::new() };
        let err = bad.validate("crd_writer.namespaces").unwrap_err();
        assert!(err.starts_with("crd_writer.namespaces.allow contains \"Team_A\""), "{err}");
    }
}
