//! What every Breakwater component agrees on about a signal.
//!
//! # Layout
//! - [`clock`] — the one place that reads the wall clock; tests inject [`ManualClock`].
//! - [`fingerprint`] — incident identity (reference spec §3.1) and its configurable variant.
//! - [`names`] — deterministic, DNS-1123 RemediationRequest names from fingerprint and window,
//!   so a retried create is idempotent and every duplicate knows its CR without a read.
//! - [`namespace_policy`] — [`NamespacePolicy`], which namespaces may receive CRs.

// Library code must not panic on input: failures are typed errors. Tests may
// unwrap (`.clippy.toml` allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod clock;
pub mod fingerprint;
pub mod layered;
pub mod names;
pub mod namespace_policy;

pub use clock::{Clock, ManualClock, SystemClock, UnixMillis};
pub use fingerprint::{FingerprintRule, delivery_key, fingerprint_of, parse_delivery_key};
pub use layered::Layered;
pub use names::{incident_cr_name, is_dns1123_label, parse_storm_cr_name, resource_id, storm_cr_name};
pub use namespace_policy::NamespacePolicy;
