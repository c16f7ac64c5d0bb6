//! The `breakwater` binary as a library, so tests start exactly what users run.
//!
//! # Layout
//! - [`cli`] — the clap subcommands and what each runs.
//! - [`config`] — [`Config`], the file + environment + flags loader.
//! - [`compose`] — starting components on listeners, alone or all together (`up`).

pub mod cli;
pub mod compose;
pub mod config;

pub use compose::{Gateway, Shutdown};
pub use config::Config;
