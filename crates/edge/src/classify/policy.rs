//! The priority policy: Rego, evaluated by `regorus`, cached by its inputs, and read again
//! when its file changes.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// The policy Breakwater ships: the reference gateway's table, with its `team` rule.
pub const DEFAULT_POLICY: &str = include_str!("default_priority.rego");

const PRIORITY_RULE: &str = "data.kubernaut.gateway.priority.priority";
const PATH_RULE: &str = "data.kubernaut.gateway.priority.remediation_path";
/// Decisions kept; past it the cache starts again (inputs are few: severities ×
/// environments × the label sets of open incidents).
const CACHE_ENTRIES: usize = 4096;

/// What the policy decided for one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// `P0`..`P3`; `P2` when the policy failed.
    pub priority: &'static str,
    /// The policy's `remediation_path`, when it defines one for this input.
    pub remediation_path: Option<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the priority policy {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("the priority policy {path} does not compile: {cause}")]
    Compile { path: String, cause: String },
    #[error("the priority policy {path} compiles but does not answer {PRIORITY_RULE} with P0..P3: {cause}")]
    NoPriority { path: String, cause: String },
}

/// One input of the policy.
pub struct Input<'a> {
    pub severity: &'a str,
    pub environment: &'a str,
    pub namespace: &'a str,
    pub labels: &'a HashMap<String, String>,
}

/// The compiled policy and what it decided so far.
struct Loaded {
    engine: regorus::Engine,
    cache: HashMap<u64, Decision, foldhash::fast::RandomState>,
    /// The file's modification time and length when it was read.
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

/// A priority policy: the built-in one, or a file read again within `reload_interval`
/// of a change (a ConfigMap mount changes it in place).
pub struct PriorityPolicy {
    file: Option<PathBuf>,
    reload_interval: Duration,
    loaded: Mutex<Loaded>,
    /// Keys are hashed on every alert: a fast hasher (the cache holds no attacker-chosen
    /// collisions worth more than a re-evaluation, and its size is capped).
    hasher: foldhash::fast::RandomState,
}

impl std::fmt::Debug for PriorityPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PriorityPolicy").field("file", &self.file).finish_non_exhaustive()
    }
}

impl PriorityPolicy {
    /// The policy in `file`, or the built-in one.
    ///
    /// # Errors
    /// When the file cannot be read, does not compile, or does not answer a priority.
    pub fn load(file: Option<PathBuf>, reload_interval: Duration) -> Result<Self, PolicyError> {
        let (engine, stamp) = match &file {
            Some(path) => read(path)?,
            None => (compile("built-in", DEFAULT_POLICY)?, None),
        };
        let loaded = Loaded { engine, cache: HashMap::default(), stamp, checked: Instant::now() };
        Ok(Self { file, reload_interval, loaded: Mutex::new(loaded), hasher: foldhash::fast::RandomState::default() })
    }

    /// The decision for `input`, from the cache when the policy already saw it.
    pub fn decide(&self, input: &Input<'_>) -> Decision {
        let key = self.key(input);
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        self.reload_if_changed(&mut loaded);
        if let Some(decision) = loaded.cache.get(&key) {
            return *decision;
        }
        let decision = evaluate(&mut loaded.engine, input);
        if loaded.cache.len() >= CACHE_ENTRIES {
            loaded.cache.clear();
        }
        loaded.cache.insert(key, decision);
        decision
    }

    /// A hash of the whole input; labels are combined in any order.
    fn key(&self, input: &Input<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        (input.severity, input.environment, input.namespace).hash(&mut h);
        let labels = input.labels.iter().fold(0u64, |acc, entry| acc.wrapping_add(self.hasher.hash_one(entry)));
        labels.hash(&mut h);
        h.finish()
    }

    fn reload_if_changed(&self, loaded: &mut Loaded) {
        let Some(path) = &self.file else { return };
        if loaded.checked.elapsed() < self.reload_interval {
            return;
        }
        loaded.checked = Instant::now();
        if stamp(path).ok() == loaded.stamp {
            return;
        }
        match read(path) {
            Ok((engine, stamp)) => {
                tracing::info!(path = %path.display(), "priority policy reloaded");
                metrics::counter!("breakwater_priority_policy_reloads_total", "outcome" => "ok").increment(1);
                *loaded = Loaded { engine, cache: HashMap::default(), stamp, checked: Instant::now() };
            }
            Err(e) => {
                // The policy in use stays; the next change is tried again.
                tracing::error!(cause = %e, "priority policy not reloaded; the previous one stays in use");
                metrics::counter!("breakwater_priority_policy_reloads_total", "outcome" => "error").increment(1);
                loaded.stamp = stamp(path).ok();
            }
        }
    }
}

fn stamp(path: &std::path::Path) -> std::io::Result<(SystemTime, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified()?, meta.len()))
}

fn read(path: &std::path::Path) -> Result<(regorus::Engine, Option<(SystemTime, u64)>), PolicyError> {
    let shown = path.display().to_string();
    let stamp = stamp(path).map_err(|cause| PolicyError::Read { path: shown.clone(), cause })?;
    let text = std::fs::read_to_string(path).map_err(|cause| PolicyError::Read { path: shown.clone(), cause })?;
    Ok((compile(&shown, &text)?, Some(stamp)))
}

/// Compiles `text` and checks that it answers a priority for a plain input.
fn compile(path: &str, text: &str) -> Result<regorus::Engine, PolicyError> {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy(path.to_owned(), text.to_owned())
        .map_err(|e| PolicyError::Compile { path: path.to_owned(), cause: e.to_string() })?;
    let labels = HashMap::new();
    let probe = Input { severity: "critical", environment: "production", namespace: "default", labels: &labels };
    priority_of(&mut engine, &probe).map_err(|cause| PolicyError::NoPriority { path: path.to_owned(), cause })?;
    Ok(engine)
}

/// The policy's decision; a failure is logged, counted and decided `P2`.
fn evaluate(engine: &mut regorus::Engine, input: &Input<'_>) -> Decision {
    match priority_of(engine, input) {
        Ok(priority) => Decision { priority, remediation_path: remediation_path_of(engine) },
        Err(cause) => {
            tracing::warn!(%cause, severity = input.severity, environment = input.environment, "priority policy failed; P2");
            metrics::counter!("breakwater_priority_policy_errors_total").increment(1);
            Decision { priority: "P2", remediation_path: None }
        }
    }
}

fn priority_of(engine: &mut regorus::Engine, input: &Input<'_>) -> Result<&'static str, String> {
    let json = serde_json::json!({
        "severity": input.severity,
        "environment": input.environment,
        "namespace": input.namespace,
        "labels": input.labels,
    });
    engine.set_input_json(&json.to_string()).map_err(|e| e.to_string())?;
    let value = engine.eval_rule(PRIORITY_RULE.to_owned()).map_err(|e| e.to_string())?;
    let answer = value.as_string().map_err(|_| format!("answered {value}, not a string"))?;
    ["P0", "P1", "P2", "P3"]
        .into_iter()
        .find(|p| **p == **answer)
        .ok_or_else(|| format!("answered {answer:?}, not one of P0..P3"))
}

/// The policy's `remediation_path` for the input set last, when it defines a known one.
fn remediation_path_of(engine: &mut regorus::Engine) -> Option<&'static str> {
    let value = engine.eval_rule(PATH_RULE.to_owned()).ok()?;
    let answer = value.as_string().ok()?;
    super::REMEDIATION_PATHS.into_iter().find(|p| **p == **answer)
}
