//! The `breakwater` binary as a library, so tests start exactly what users run.
//!
//! # Layout
//! - [`cli`] — the clap subcommands and what each runs.
//! - [`config`] — [`Config`], the file + environment + flags loader.
//! - [`compose`] — starting components: each alone on a listener, or all in one process (`up`).
//! - [`plan`] — the Redis memory a load needs against the budgets (`plan`).
//! - [`doctor`] — checks of a deployment's Redis instances (`doctor`).

// Library code must not panic on input: failures are typed errors. Tests may
// unwrap (`.clippy.toml` allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod cli;
pub mod compose;
pub mod config;
pub mod doctor;
pub mod plan;

pub use compose::{Gateway, Shutdown};
pub use config::Config;
