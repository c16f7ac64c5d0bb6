//! Split mode for fault tests: every component its own `breakwater` process on one Redis, each
//! restartable on its address, and the CR files the directory sink wrote.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use breakwater_testkit::{BreakwaterProcess as Process, RedisServer, unique_key_root};
use serde_json::Value;
use tempfile::TempDir;

/// A loopback port that was free a moment ago; each process keeps its port across restarts.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// One `breakwater` subcommand on a fixed address, restartable on that address.
pub(crate) struct Component {
    pub(crate) name: &'static str,
    port: u16,
    env: Vec<(String, String)>,
    extra: Vec<String>,
    process: Option<Process>,
}

impl Component {
    pub(crate) async fn start(name: &'static str, env: &[(String, String)], extra: &[String]) -> Self {
        let mut component = Self { name, port: free_port(), env: env.to_vec(), extra: extra.to_vec(), process: None };
        component.restart().await;
        component
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the process on its port; the port may still be held for a moment, so it tries a few times.
    pub(crate) async fn restart(&mut self) {
        let listen = self.addr();
        let mut last_error = String::new();
        for _ in 0..10 {
            let mut args = vec![self.name.to_owned(), "--listen".to_owned(), listen.clone()];
            args.extend(self.extra.iter().cloned());
            let env = self.env.clone();
            let started = tokio::spawn(async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                Process::start(env!("CARGO_BIN_EXE_breakwater"), &args, &env).await
            })
            .await;
            match started {
                Ok(process) => {
                    assert_eq!(process.addr, listen, "{} listens where it was told", self.name);
                    self.process = Some(process);
                    return;
                }
                Err(err) => last_error = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{} could not start again on {listen}: {last_error}", self.name);
    }

    /// Its `/metrics` (with `--metrics-listen` among its arguments), while it runs.
    #[allow(dead_code, reason = "only replicas.rs reads a component's metrics; every test binary compiles this module")]
    pub(crate) fn metrics_url(&self) -> Option<String> {
        self.process.as_ref().map(Process::metrics_url)
    }

    /// Its stderr (the logs) so far, while it runs.
    #[allow(dead_code, reason = "only replicas.rs reads a component's logs; every test binary compiles this module")]
    pub(crate) fn stderr(&self) -> Vec<String> {
        self.process.as_ref().map(Process::stderr).unwrap_or_default()
    }

    /// SIGTERM, as Kubernetes stops a pod, and waits for it to exit 0: it drains its calls first.
    #[allow(dead_code, reason = "only replicas.rs stops a process gracefully; every test binary compiles this module")]
    pub(crate) async fn terminate(&mut self) {
        let mut process = self.process.take().unwrap_or_else(|| panic!("{} is not running", self.name));
        let pid = process.child.id().map(|id| id.to_string()).unwrap_or_else(|| panic!("{} has no pid", self.name));
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(sent.success(), "SIGTERM sent to {} ({pid})", self.name);
        let status = tokio::time::timeout(Duration::from_secs(15), process.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within 15 s of SIGTERM: {:#?}", self.name, process.stderr()))
            .expect("wait for the stopped process");
        assert!(status.success(), "{} exits 0 on SIGTERM: {status}; {:#?}", self.name, process.stderr());
    }

    /// SIGKILL, and waits until it is gone: nothing is flushed on the way out.
    pub(crate) async fn kill_9(&mut self) {
        let mut process = self.process.take().unwrap_or_else(|| panic!("{} is not running", self.name));
        process.child.start_kill().expect("SIGKILL sent");
        let status = tokio::time::timeout(Duration::from_secs(10), process.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not die within 10 s of SIGKILL", self.name))
            .expect("wait for the killed process");
        assert!(!status.success(), "{} was killed, not exited: {status}", self.name);
    }
}

/// Split mode on one Redis (each test its own key root): ratelimit, dedup, storm, crd-writer
/// writing CR files to a temporary directory, and `edges` edges in front of them.
pub(crate) struct SplitMode {
    ratelimit: Component,
    dedup: Component,
    storm: Component,
    crd_writer: Component,
    pub(crate) edges: Vec<Component>,
    /// The directory sink's root.
    pub(crate) sink: TempDir,
    /// crd-writer's state directory: its journal of counts not yet written survives a SIGKILL,
    /// as an emptyDir volume keeps it across a container restart.
    _state: TempDir,
    _redis: RedisServer,
}

impl SplitMode {
    /// Starts every process with `env` (`BREAKWATER_*` settings; the stores and addresses are
    /// set here) and waits until each edge sees every component serving.
    pub(crate) async fn start(test: &str, env: &[(String, String)], edges: usize) -> Self {
        let redis = RedisServer::builder().maxmemory("256mb").maxmemory_policy("volatile-lru").start().await;
        let sink = tempfile::tempdir().expect("temporary sink directory");
        let state = tempfile::tempdir().expect("temporary state directory");
        let root = unique_key_root(test);
        let mut env: Vec<(String, String)> =
            [("RUST_LOG".to_owned(), "warn".to_owned())].into_iter().chain(env.iter().cloned()).collect();
        for section in ["RATELIMIT", "DEDUP", "STORM"] {
            env.push((format!("BREAKWATER_{section}__STORE"), "redis".into()));
            env.push((format!("BREAKWATER_{section}__REDIS__URL"), redis.url()));
            env.push((format!("BREAKWATER_{section}__REDIS__KEY_ROOT"), root.clone()));
        }
        let ratelimit = Component::start("ratelimit", &env, &[]).await;
        let dedup = Component::start("dedup", &env, &[]).await;
        let storm = Component::start("storm", &env, &[]).await;
        let mut writer_env = env.clone();
        writer_env.push(("BREAKWATER_EMBEDDED__DIR".into(), utf8(state.path())));
        let crd_writer = Component::start("crd-writer", &writer_env, &["--sink-dir".into(), utf8(sink.path())]).await;
        let mut edge_env = env;
        for (key, component) in
            [("RATELIMIT", &ratelimit), ("DEDUP", &dedup), ("STORM", &storm), ("CRD_WRITER", &crd_writer)]
        {
            edge_env.push((format!("BREAKWATER_EDGE__COMPONENTS__{key}"), format!("http://{}", component.addr())));
        }
        let mut started = Vec::new();
        for _ in 0..edges {
            started.push(Component::start("edge", &edge_env, &[]).await);
        }
        let split = Self { ratelimit, dedup, storm, crd_writer, edges: started, sink, _state: state, _redis: redis };
        split.wait_all_serving("start").await;
        split
    }

    /// The component called `name` (`ratelimit`, `dedup`, `storm`, `crd-writer`), or the first edge.
    pub(crate) fn component(&mut self, name: &str) -> &mut Component {
        match name {
            "ratelimit" => &mut self.ratelimit,
            "dedup" => &mut self.dedup,
            "storm" => &mut self.storm,
            "crd-writer" => &mut self.crd_writer,
            _ => &mut self.edges[0],
        }
    }

    /// `http://EDGE/api/v1/signals/prometheus` of edge `index`.
    pub(crate) fn webhook_url(&self, index: usize) -> String {
        format!("http://{}/api/v1/signals/prometheus", self.edges[index].addr())
    }

    /// Waits until every edge's `/readyz` lists every component as serving; answers how long
    /// that took, in seconds.
    pub(crate) async fn wait_all_serving(&self, what: &str) -> f64 {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().expect("client");
        let start = Instant::now();
        for edge in &self.edges {
            let mut last = Value::Null;
            loop {
                if let Ok(response) = client.get(format!("http://{}/readyz", edge.addr())).send().await
                    && let Ok(ready) = response.json::<Value>().await
                {
                    let components = ready["components"].as_object().cloned().unwrap_or_default();
                    if !components.is_empty() && components.values().all(|c| c["state"] == "serving") {
                        break;
                    }
                    last = ready;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "after {what}, edge {} did not see every component serving within 15 s: {last}",
                    edge.addr()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        start.elapsed().as_secs_f64()
    }

    /// The CRs written so far; see [`read_crs`].
    pub(crate) fn crs(&self, strict: bool) -> BTreeMap<String, Value> {
        read_crs(self.sink.path(), strict)
    }
}

fn utf8(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

/// Every RemediationRequest under the directory sink, as `(namespace/name, object)`.
/// While settling a file may be caught mid-write; `strict` (the final read) fails on one that does not parse.
fn read_crs(root: &Path, strict: bool) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let Ok(namespaces) = std::fs::read_dir(root) else { return out };
    for ns in namespaces.flatten().filter(|e| e.path().is_dir()) {
        let ns_name = ns.file_name().to_string_lossy().into_owned();
        if ns_name.starts_with('.') {
            continue;
        }
        for file in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let parsed = std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|text| serde_saphyr::from_str::<Value>(&text).map_err(|e| e.to_string()));
                let cr = match parsed {
                    Ok(cr) => cr,
                    Err(err) if strict => panic!("{}: {err}", path.display()),
                    Err(_) => continue,
                };
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                out.insert(format!("{ns_name}/{stem}"), cr);
            }
        }
    }
    out
}

pub(crate) fn is_storm(cr: &Value) -> bool {
    cr["spec"]["isStorm"].as_bool().unwrap_or(false)
}

/// What one CR counts: its occurrences, or a storm CR's alerts.
pub(crate) fn cr_count(cr: &Value) -> u64 {
    if is_storm(cr) {
        cr["spec"]["stormAlertCount"].as_u64().unwrap_or(0)
    } else {
        cr["spec"]["deduplication"]["occurrenceCount"].as_u64().unwrap_or(0)
    }
}

/// The invariant of promise 1, summed over all CRs.
pub(crate) fn accounted(crs: &BTreeMap<String, Value>) -> u64 {
    crs.values().map(cr_count).sum()
}
