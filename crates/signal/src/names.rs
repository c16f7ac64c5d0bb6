//! Deterministic RemediationRequest names.
//!
//! A name is a pure function of the incident (fingerprint, window start), so
//! retries and fallbacks produce the same name and Kubernetes' AlreadyExists
//! makes a second create harmless. Names are DNS-1123 labels of at most 63
//! characters: `rr-<16 hex>-<ms>` is 33, `storm-<16 hex>-<ms>` is 36.

use crate::UnixMillis;
use crate::fingerprint::fingerprint_of;

/// Name of the CR of the incident `fingerprint` whose window opened at `first_seen`.
pub fn incident_cr_name(fingerprint: &str, first_seen: UnixMillis) -> String {
    format!("rr-{}-{}", dns_hex16(fingerprint), first_seen.max(0))
}

/// Name of the storm CR of `(namespace, alert_name)` whose window opened at `window_start`.
pub fn storm_cr_name(namespace: &str, alert_name: &str, window_start: UnixMillis) -> String {
    let key = fingerprint_of(&[namespace, alert_name]);
    format!("storm-{}-{}", dns_hex16(&key), window_start.max(0))
}

/// The `(id, window_start)` a storm CR name was made of, where `id` is the 16
/// hex of (namespace, alertname); `None` for any other name.
pub fn parse_storm_cr_name(name: &str) -> Option<(&str, UnixMillis)> {
    let rest = name.strip_prefix("storm-")?;
    let (id, start) = rest.split_once('-')?;
    let valid_id = id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let start: UnixMillis = start.parse().ok().filter(|s| *s >= 0 && valid_id)?;
    Some((id, start))
}

/// Whether `s` is a DNS-1123 label (lower-case alphanumerics and `-`, alphanumeric at both
/// ends, 1..=63 characters): what namespaces and Breakwater's CR names are.
pub fn is_dns1123_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
}

/// Resource identity used in storm state and on storm CRs: `ns:Kind:name`, or
/// `Kind:name` for cluster-scoped resources (reference spec §2.3).
pub fn resource_id(namespace: &str, kind: &str, name: &str) -> String {
    if namespace.is_empty() { format!("{kind}:{name}") } else { format!("{namespace}:{kind}:{name}") }
}

/// The first 16 characters of a fingerprint, or of its hash when it is not
/// lower-case hex, so the name stays DNS-1123 whatever the caller passed.
fn dns_hex16(fingerprint: &str) -> String {
    let hex =
        if crate::fingerprint::is_valid(fingerprint) { fingerprint.to_owned() } else { fingerprint_of(&[fingerprint]) };
    hex[..16].to_owned()
}

#[cfg(test)]
mod tests;
