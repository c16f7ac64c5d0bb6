//! Incident identity.
//!
//! The default follows the reference gateway (§3.1): SHA-256 of
//! `alertname:namespace:kind:name`, so severity and other labels never split an
//! incident. The alternative hashes a configured list of label names.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Layered;

/// How the edge derives a fingerprint from a signal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FingerprintRule {
    /// `alertname:namespace:kind:name` (reference spec §3.1).
    #[default]
    Resource,
    /// `name=value` of each listed label, in the listed order; a missing label
    /// counts as empty.
    Labels(Vec<String>),
}

impl FingerprintRule {
    /// Fingerprint of a signal given its identity parts and labels.
    pub fn apply(&self, alert_name: &str, namespace: &str, kind: &str, name: &str, labels: Layered<'_>) -> String {
        match self {
            Self::Resource => fingerprint_of(&[alert_name, namespace, kind, name]),
            Self::Labels(keys) => {
                let pairs: Vec<String> = keys.iter().map(|k| format!("{k}={}", labels.get(k).unwrap_or(""))).collect();
                let parts: Vec<&str> = pairs.iter().map(String::as_str).collect();
                fingerprint_of(&parts)
            }
        }
    }
}

/// Lower-case hex SHA-256 of the parts joined by `:` (64 characters).
pub fn fingerprint_of(parts: &[&str]) -> String {
    hex::encode(Sha256::digest(parts.join(":").as_bytes()))
}

/// Identity of one delivery of a signal (a sender's retry and an Alertmanager HA peer's copy
/// carry the same parts): 32 lower-case hex characters, the first 128 bits of the SHA-256 of
/// the length-prefixed parts, so no two part lists collide whatever characters they hold.
pub fn delivery_key(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.len().to_string().as_bytes());
        hash.update(b":");
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    hex::encode(&digest[..16])
}

/// Parses [`delivery_key`]'s form (32 lower-case hex characters) into its 128 bits.
pub fn parse_delivery_key(hex: &str) -> Option<u128> {
    let valid = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    valid.then(|| u128::from_str_radix(hex, 16).ok()).flatten()
}

/// Whether `s` is a fingerprint as the CRD schema requires (`^[a-f0-9]{64}$`).
pub fn is_valid(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests;
