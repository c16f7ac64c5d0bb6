//! Test logging: one `tracing` subscriber per test binary, captured by the test harness.

use tracing_subscriber::EnvFilter;

/// Installs a `tracing` fmt subscriber that writes through the test harness's captured output
/// and filters with `RUST_LOG` (default `warn`).
///
/// Safe to call from every test: when a global subscriber is already set (by an earlier test in
/// the same binary, or by the test itself), the call does nothing.
pub fn init_test_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    // An `Err` only means a subscriber is already installed, which is the expected case for
    // every test after the first.
    let _already_set = tracing_subscriber::fmt().with_test_writer().with_env_filter(filter).try_init();
}
