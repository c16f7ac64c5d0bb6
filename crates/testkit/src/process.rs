//! A `breakwater` subcommand as a child process: the way split mode and the
//! binary's own tests run it.

use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `breakwater` process, killed on drop. Its stderr lines (the
/// logs) are kept for the test to read.
pub struct BreakwaterProcess {
    pub child: Child,
    /// Where it listens, from its "… listening on ADDR" line.
    pub addr: String,
    /// Where the edge's gRPC ingest API listens, when `env` sets `BREAKWATER_LISTEN__INGEST`.
    pub ingest: Option<String>,
    /// Where it serves `/metrics`, when started with `--metrics-listen`.
    pub metrics: Option<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl BreakwaterProcess {
    /// Starts `binary args…` (pass `env!("CARGO_BIN_EXE_breakwater")`) with
    /// `env` and `RUST_LOG=info` unless `env` sets it, and waits for its
    /// listening line (then the ingest API's when `env` sets `BREAKWATER_LISTEN__INGEST`, and
    /// the metrics line when `--metrics-listen` is among `args`).
    ///
    /// # Panics
    /// When the process cannot start or prints no address within 20 s; the
    /// message carries its stderr.
    pub async fn start(binary: &str, args: &[&str], env: &[(String, String)]) -> Self {
        let mut child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {binary}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            let sink = stderr.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    sink.lock().unwrap_or_else(PoisonError::into_inner).push(line);
                }
            });
        }
        let Some(stdout) = child.stdout.take() else { panic!("stdout of {binary} is not piped") };
        let mut lines = BufReader::new(stdout).lines();
        let logs = stderr.clone();
        let mut next_addr = async || {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("breakwater {args:?} printed no address within 20 s: {:#?}", logs.lock()))
                .unwrap_or_else(|e| panic!("reading the stdout of breakwater {args:?}: {e}"))
                .unwrap_or_else(|| panic!("breakwater {args:?} exited early: {:#?}", logs.lock()));
            match line.rsplit_once(' ') {
                Some((_, addr)) => addr.to_owned(),
                None => panic!("breakwater {args:?} printed {line:?}, not an address line"),
            }
        };
        let addr = next_addr().await;
        let ingest =
            if env.iter().any(|(key, _)| key == "BREAKWATER_LISTEN__INGEST") { Some(next_addr().await) } else { None };
        let metrics = if args.contains(&"--metrics-listen") { Some(next_addr().await) } else { None };
        Self { child, addr, ingest, metrics, stderr }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its `/metrics`: on the metrics port, or on its own (the edge, `up`).
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics.as_deref().unwrap_or(&self.addr))
    }

    /// The stderr lines so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}
