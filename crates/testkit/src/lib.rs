//! Shared harness for Breakwater's integration tests: real parts on loopback.
//!
//! Every spawner binds `127.0.0.1:0` (or picks a free port and retries when it loses a race),
//! waits for readiness by polling, and tears its part down on `Drop`. Tests run in parallel and
//! each starts its own servers; nothing here is shared between tests. A part that cannot start
//! (missing binary, port exhaustion, crash) panics with a message that says what to install or
//! check, so no test skips silently.
//!
//! # Layout
//!
//! - [`redis`] holds [`RedisServer`], a real `redis-server` child process, plus a tiny RESP
//!   client ([`RespConnection`]) for operator-style admin commands, and [`unique_key_root`].
//! - [`alertmanager`] holds [`Alertmanager`], a real `prometheus-alertmanager` child process
//!   whose only receiver is a webhook URL you give it.
//! - [`recorder`] holds [`WebhookRecorder`], a recording reverse proxy to put between a client
//!   (for example Alertmanager) and the server under test.
//! - [`kube`] holds [`FakeApiServer`], an in-process fake Kubernetes API server for custom
//!   resources that a real `kube::Client` talks to, with fault injection.
//! - [`eventually`](mod@eventually) holds the [`eventually()`] function and the
//!   [`assert_eventually!`] macro, which poll a condition until a deadline instead of sleeping.
//! - [`otlp`] holds [`OtlpReceiver`], an in-process OTLP/gRPC trace receiver that keeps every
//!   span it gets as a flattened [`ReceivedSpan`], plus [`otlp::tree`] to render one trace.
//! - [`prometheus`] holds a strict parser for the Prometheus text exposition format
//!   ([`prometheus::parse`] into a [`Scrape`]) and [`prometheus::scrape`], which fetches and
//!   parses a `/metrics` endpoint.
//! - [`process`] holds [`BreakwaterProcess`], a `breakwater` subcommand as a child process
//!   with its address, metrics address and log lines.
//! - [`logging`] holds [`init_test_logging`].
//!
//! The entry points are the `start`/`builder` constructors of the spawners above.

pub mod alertmanager;
pub mod eventually;
pub mod kube;
pub mod logging;
pub mod otlp;
pub mod process;
pub mod prometheus;
pub mod recorder;
pub mod redis;
pub mod tls;

mod binary;
mod port;

pub use crate::alertmanager::{Alertmanager, AlertmanagerBuilder};
pub use crate::eventually::eventually;
pub use crate::kube::{FakeApiServer, Fault, LoggedRequest, Verb};
pub use crate::otlp::{OtlpReceiver, ReceivedSpan};
pub use crate::process::BreakwaterProcess;
pub use crate::prometheus::{ParseError, Sample, Scrape};
pub use crate::recorder::{Exchange, WebhookRecorder};
pub use crate::tls::{Leaf, TestCa};

pub use crate::logging::init_test_logging;

pub use crate::redis::{
    RedisServer, RedisServerBuilder, RespConnection, RespValue, deploy_acl_for_test, unique_key_root,
};
