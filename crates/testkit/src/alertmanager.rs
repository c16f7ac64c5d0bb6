//! A real Prometheus Alertmanager on a free loopback port, delivering to one webhook.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::binary::{find_on_path, log_tail};
use crate::eventually::Deadline;
use crate::port::{ATTEMPTS, pick_unused_port};

/// How long a started Alertmanager has to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Binary names: Debian's package installs `prometheus-alertmanager`, upstream `alertmanager`.
const BINARY_NAMES: [&str; 2] = ["prometheus-alertmanager", "alertmanager"];

const MISSING_BINARY: &str = "neither prometheus-alertmanager nor alertmanager found on PATH: \
    install it with `apt-get install prometheus-alertmanager` (or run scripts/test, which installs it)";

/// Options for [`Alertmanager`]; start with [`Alertmanager::builder`].
#[derive(Debug, Clone)]
pub struct AlertmanagerBuilder {
    webhook_url: String,
    group_by: Vec<String>,
    group_wait: String,
    group_interval: String,
    repeat_interval: String,
    /// Sent as `Authorization: Bearer` from a credentials file.
    bearer_token: Option<String>,
}

impl AlertmanagerBuilder {
    /// How long Alertmanager waits before re-sending a group whose alerts did not change
    /// (`repeat_interval`, default `"1h"`). Use e.g. `"2s"` to test repeated deliveries.
    pub fn repeat_interval(mut self, interval: &str) -> Self {
        interval.clone_into(&mut self.repeat_interval);
        self
    }

    /// Labels to group by (default `["..."]`: every label, so each alert is its own group).
    pub fn group_by(mut self, labels: &[&str]) -> Self {
        self.group_by = labels.iter().map(|label| (*label).to_owned()).collect();
        self
    }

    /// How long a new group waits for more alerts before the first delivery (default `"0s"`).
    pub fn group_wait(mut self, wait: &str) -> Self {
        wait.clone_into(&mut self.group_wait);
        self
    }

    /// How long to wait before delivering changes to a group (default `"1s"`).
    pub fn group_interval(mut self, interval: &str) -> Self {
        interval.clone_into(&mut self.group_interval);
        self
    }

    /// Makes the webhook send `Authorization: Bearer <token>`, as production configures it:
    /// `http_config.authorization` with `credentials_file`, a file holding the token.
    pub fn bearer_token(mut self, token: &str) -> Self {
        self.bearer_token = Some(token.to_owned());
        self
    }

    /// Starts Alertmanager and waits until `GET /-/ready` answers 200.
    ///
    /// # Panics
    ///
    /// Panics when the binary is not on `PATH`, when it exits or is not ready within 20 s (the
    /// message includes its log), or when no free port could be bound.
    pub async fn start(self) -> Alertmanager {
        let Some(binary) = find_on_path(&BINARY_NAMES) else {
            panic!("{MISSING_BINARY}");
        };
        let dir = match tempfile::Builder::new().prefix("breakwater-alertmanager-").tempdir() {
            Ok(dir) => dir,
            Err(err) => panic!("cannot create a temporary directory for Alertmanager: {err}"),
        };
        // A unique receiver name lets readiness tell our process from another test's that won
        // the race for the port.
        let receiver = format!("webhook-{}", uuid::Uuid::new_v4().simple());
        let config_path = dir.path().join("alertmanager.yml");
        if let Err(err) = std::fs::write(&config_path, self.config_yaml(&receiver, dir.path())) {
            panic!("cannot write {}: {err}", config_path.display());
        }
        let http = match reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build() {
            Ok(http) => http,
            Err(err) => panic!("cannot build an HTTP client for Alertmanager: {err}"),
        };
        // An empty address disables the gossip cluster (and its second port).
        let standalone = ["--cluster.listen-address=".to_owned()];
        for _ in 0..ATTEMPTS {
            let port = pick_unused_port();
            if let Some(child) = launch(&binary, &dir, &config_path, port, &receiver, &http, &standalone).await {
                return Alertmanager { _child: child, port, cluster_port: None, dir, http };
            }
        }
        panic!("Alertmanager could not bind a free loopback port in {ATTEMPTS} attempts");
    }

    /// Starts one peer per entry of `webhook_urls` (peer `i` delivers to `webhook_urls[i]`;
    /// the builder's own URL is not used), clustered over loopback gossip, as Alertmanager
    /// runs in production. Every peer has the same route and receiver, so their notifications
    /// of one group carry the same `groupKey` and `receiver`.
    ///
    /// Gossip is slow (every 10 s) and a peer waits only 10 ms for the peers before it, so
    /// every peer delivers every notification itself, as during a partition or slow gossip;
    /// the cluster still forms (`alertmanager_cluster_members`) and settles within 2 s.
    ///
    /// # Panics
    ///
    /// As [`AlertmanagerBuilder::start`], for each peer.
    pub async fn start_cluster(self, webhook_urls: &[String]) -> Vec<Alertmanager> {
        let Some(binary) = find_on_path(&BINARY_NAMES) else {
            panic!("{MISSING_BINARY}");
        };
        let receiver = format!("webhook-{}", uuid::Uuid::new_v4().simple());
        let http = match reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build() {
            Ok(http) => http,
            Err(err) => panic!("cannot build an HTTP client for Alertmanager: {err}"),
        };
        let mut peers: Vec<Alertmanager> = Vec::new();
        for webhook_url in webhook_urls {
            let dir = match tempfile::Builder::new().prefix("breakwater-alertmanager-").tempdir() {
                Ok(dir) => dir,
                Err(err) => panic!("cannot create a temporary directory for Alertmanager: {err}"),
            };
            let config_path = dir.path().join("alertmanager.yml");
            let config = AlertmanagerBuilder { webhook_url: webhook_url.clone(), ..self.clone() }
                .config_yaml(&receiver, dir.path());
            if let Err(err) = std::fs::write(&config_path, config) {
                panic!("cannot write {}: {err}", config_path.display());
            }
            let mut started = None;
            for _ in 0..ATTEMPTS {
                let (port, cluster_port) = (pick_unused_port(), pick_unused_port());
                let mut cluster = vec![
                    format!("--cluster.listen-address=127.0.0.1:{cluster_port}"),
                    format!("--cluster.advertise-address=127.0.0.1:{cluster_port}"),
                    "--cluster.gossip-interval=10s".to_owned(),
                    "--cluster.peer-timeout=10ms".to_owned(),
                    "--cluster.settle-timeout=2s".to_owned(),
                ];
                cluster.extend(
                    peers.iter().filter_map(|peer| peer.cluster_port).map(|p| format!("--cluster.peer=127.0.0.1:{p}")),
                );
                if let Some(child) = launch(&binary, &dir, &config_path, port, &receiver, &http, &cluster).await {
                    started = Some(Alertmanager {
                        _child: child,
                        port,
                        cluster_port: Some(cluster_port),
                        dir,
                        http: http.clone(),
                    });
                    break;
                }
            }
            match started {
                Some(peer) => peers.push(peer),
                None => panic!("Alertmanager could not bind free loopback ports in {ATTEMPTS} attempts"),
            }
        }
        peers
    }

    /// The configuration file: one route to one webhook receiver that also sends resolutions,
    /// with the bearer token's credentials file written into `dir`.
    /// Strings are written as JSON strings, which YAML reads verbatim.
    fn config_yaml(&self, receiver: &str, dir: &Path) -> String {
        let quote = |text: &str| serde_json::Value::from(text).to_string();
        let http_config = match &self.bearer_token {
            Some(token) => {
                let path = dir.join("webhook-token");
                if let Err(err) = std::fs::write(&path, token) {
                    panic!("cannot write {}: {err}", path.display());
                }
                format!(
                    "        http_config:\n          authorization:\n            type: Bearer\n            \
                     credentials_file: {}\n",
                    quote(&path.to_string_lossy())
                )
            }
            None => String::new(),
        };
        let group_by: Vec<String> = self.group_by.iter().map(|label| quote(label)).collect();
        format!(
            "route:\n  receiver: {receiver}\n  group_by: [{group_by}]\n  group_wait: {wait}\n  \
             group_interval: {interval}\n  repeat_interval: {repeat}\n\
             receivers:\n  - name: {receiver}\n    webhook_configs:\n      - url: {url}\n        \
             send_resolved: true\n{http_config}",
            receiver = quote(receiver),
            group_by = group_by.join(", "),
            wait = quote(&self.group_wait),
            interval = quote(&self.group_interval),
            repeat = quote(&self.repeat_interval),
            url = quote(&self.webhook_url),
        )
    }
}

/// A `prometheus-alertmanager` child process on `127.0.0.1`, killed on `Drop`.
///
/// Clustering is disabled unless started by [`AlertmanagerBuilder::start_cluster`]; storage
/// lives in a temporary directory removed on `Drop`.
pub struct Alertmanager {
    /// Held only to kill the process on drop; declared first so it dies before `dir` goes.
    _child: Child,
    port: u16,
    /// The gossip port of a clustered peer.
    cluster_port: Option<u16>,
    dir: TempDir,
    http: reqwest::Client,
}

impl Alertmanager {
    /// Options for an Alertmanager that delivers every notification to `webhook_url` (for
    /// example `format!("{}/api/v1/alertmanager", recorder.url())`).
    pub fn builder(webhook_url: &str) -> AlertmanagerBuilder {
        AlertmanagerBuilder {
            webhook_url: webhook_url.to_owned(),
            group_by: vec!["...".to_owned()],
            group_wait: "0s".to_owned(),
            group_interval: "1s".to_owned(),
            repeat_interval: "1h".to_owned(),
            bearer_token: None,
        }
    }

    /// Starts an Alertmanager with default options; see [`AlertmanagerBuilder::start`].
    pub async fn start(webhook_url: &str) -> Self {
        Self::builder(webhook_url).start().await
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Alertmanager's log so far, for debugging a failing test.
    pub fn log(&self) -> String {
        log_tail(&self.log_path(), usize::MAX)
    }

    /// Posts alerts to `POST /api/v2/alerts`, as Prometheus would.
    ///
    /// `alerts` is a JSON array of `{labels, annotations, startsAt?, endsAt?, generatorURL?}`;
    /// an `endsAt` in the past resolves the alert.
    ///
    /// # Panics
    ///
    /// Panics when the request fails or Alertmanager does not answer 200 (the message has its
    /// answer, e.g. a validation error for a malformed alert).
    pub async fn post_alerts(&self, alerts: &serde_json::Value) {
        let url = format!("{}/api/v2/alerts", self.url());
        let response = match self.http.post(&url).json(alerts).send().await {
            Ok(response) => response,
            Err(err) => panic!("POST {url} failed: {err}; Alertmanager log:\n{}", log_tail(&self.log_path(), 20)),
        };
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            let body = response.text().await.unwrap_or_default();
            panic!("POST {url} answered {status}: {body}");
        }
    }

    fn log_path(&self) -> PathBuf {
        log_path(&self.dir)
    }
}

fn log_path(dir: &TempDir) -> PathBuf {
    dir.path().join("alertmanager.log")
}

/// Starts Alertmanager on `port` and waits until it is ready. `None` means the port was taken
/// by someone else and the caller should try again.
async fn launch(
    binary: &Path,
    dir: &TempDir,
    config_path: &Path,
    port: u16,
    receiver: &str,
    http: &reqwest::Client,
    cluster_args: &[String],
) -> Option<Child> {
    let log_path = log_path(dir);
    let log = match std::fs::File::create(&log_path) {
        Ok(log) => log,
        Err(err) => panic!("cannot create {}: {err}", log_path.display()),
    };
    let mut command = Command::new(binary);
    command
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!("--storage.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .args(cluster_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => panic!("cannot run {}: {err}", binary.display()),
    };
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Deadline::after(READY_TIMEOUT);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let log = log_tail(&log_path, 30);
                if log.contains("address already in use") {
                    return None;
                }
                panic!("Alertmanager on port {port} exited with {status} before it was ready; its log:\n{log}");
            }
            Ok(None) => {}
            Err(err) => panic!("cannot poll the Alertmanager process: {err}"),
        }
        if is_ready(http, &base).await {
            // Ready on our port, but is it ours? Another test's Alertmanager has another receiver.
            if serves_receiver(http, &base, receiver).await {
                return Some(child);
            }
            let _ = child.kill().await;
            return None;
        }
        if deadline.expired() {
            let _ = child.kill().await;
            panic!(
                "Alertmanager on port {port} was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                log_tail(&log_path, 30)
            );
        }
        deadline.tick().await;
    }
}

async fn is_ready(http: &reqwest::Client, base: &str) -> bool {
    http.get(format!("{base}/-/ready")).send().await.is_ok_and(|response| response.status() == reqwest::StatusCode::OK)
}

/// Whether the Alertmanager at `base` runs the configuration with our receiver name.
async fn serves_receiver(http: &reqwest::Client, base: &str, receiver: &str) -> bool {
    let Ok(response) = http.get(format!("{base}/api/v2/status")).send().await else {
        return false;
    };
    let Ok(status) = response.json::<serde_json::Value>().await else {
        return false;
    };
    status["config"]["original"].as_str().is_some_and(|config| config.contains(receiver))
}

#[cfg(test)]
mod tests;
