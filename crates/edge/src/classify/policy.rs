//! The priority policy: Rego, evaluated by `regorus`, cached by its inputs, and read again
//! when its file changes.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use breakwater_signal::Layered;

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
    pub labels: Layered<'a>,
}

/// The compiled policy and what it decided so far.
struct Loaded {
    engine: regorus::Engine,
    /// What of the input the policy reads: its decisions are cached by that alone.
    reads: Reads,
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
        let (engine, reads, stamp) = match &file {
            Some(path) => read(path)?,
            None => (compile("built-in", DEFAULT_POLICY)?, Reads::of(DEFAULT_POLICY), None),
        };
        let loaded = Loaded { engine, reads, cache: HashMap::default(), stamp, checked: Instant::now() };
        Ok(Self { file, reload_interval, loaded: Mutex::new(loaded), hasher: foldhash::fast::RandomState::default() })
    }

    /// The decision for `input`, from the cache when the policy already saw it.
    pub fn decide(&self, input: &Input<'_>) -> Decision {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        self.reload_if_changed(&mut loaded);
        let key = self.key(&loaded.reads, input);
        if let Some(decision) = loaded.cache.get(&key) {
            return *decision;
        }
        let defines_path = loaded.reads.remediation_path;
        let decision = evaluate(&mut loaded.engine, input, defines_path);
        if loaded.cache.len() >= CACHE_ENTRIES {
            loaded.cache.clear();
        }
        loaded.cache.insert(key, decision);
        decision
    }

    /// A hash of the input the policy reads (`reads`): the built-in policy reads one label,
    /// so a new alert of a known severity, environment and team is a cache hit. Labels are
    /// combined in any order when the policy may read them all.
    fn key(&self, reads: &Reads, input: &Input<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        (input.severity, input.environment).hash(&mut h);
        if reads.namespace {
            input.namespace.hash(&mut h);
        }
        match &reads.labels {
            LabelsRead::Keys(keys) => {
                for key in keys {
                    input.labels.get(key).hash(&mut h);
                }
            }
            LabelsRead::All => {
                let all = input.labels.iter().fold(0u64, |acc, entry| acc.wrapping_add(self.hasher.hash_one(entry)));
                all.hash(&mut h);
            }
        }
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
            Ok((engine, reads, stamp)) => {
                tracing::info!(path = %path.display(), "priority policy reloaded");
                metrics::counter!("breakwater_priority_policy_reloads_total", "outcome" => "ok").increment(1);
                *loaded = Loaded { engine, reads, cache: HashMap::default(), stamp, checked: Instant::now() };
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

type Read = (regorus::Engine, Reads, Option<(SystemTime, u64)>);

fn read(path: &std::path::Path) -> Result<Read, PolicyError> {
    let shown = path.display().to_string();
    let stamp = stamp(path).map_err(|cause| PolicyError::Read { path: shown.clone(), cause })?;
    let text = std::fs::read_to_string(path).map_err(|cause| PolicyError::Read { path: shown.clone(), cause })?;
    Ok((compile(&shown, &text)?, Reads::of(&text), Some(stamp)))
}

/// `text` with its `#` comments blanked (a `#` inside a string is kept).
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_string = false;
        let mut escaped = false;
        let mut end = line.len();
        for (at, c) in line.char_indices() {
            match c {
                '\\' if in_string => escaped = !escaped,
                '"' if !escaped => in_string = !in_string,
                '#' if !in_string => {
                    end = at;
                    break;
                }
                _ => escaped = false,
            }
            if c != '\\' {
                escaped = false;
            }
        }
        out.push_str(&line[..end]);
        out.push('\n');
    }
    out
}

/// The labels a policy reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelsRead {
    /// Only these, each by name (`input.labels.team`, `input.labels["app.kubernetes.io/name"]`).
    Keys(Vec<String>),
    /// Any: the policy reads `input.labels` (or `input`) some other way.
    All,
}

/// What of the input a policy reads, from its text. Conservative: a use of `input` it does
/// not recognise counts as reading everything, so the cache never answers for an input that
/// differs in something the policy reads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reads {
    labels: LabelsRead,
    namespace: bool,
    /// Whether it defines `remediation_path` (else it is not asked, which fails every time).
    remediation_path: bool,
}

impl Reads {
    fn of(text: &str) -> Self {
        let text = &without_comments(text);
        let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let mut keys = Vec::new();
        let (mut all, mut namespace) = (false, false);
        for (at, _) in text.match_indices("input") {
            if text[..at].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            let rest = &text[at + "input".len()..];
            if rest.chars().next().is_some_and(is_ident) {
                continue;
            }
            let field =
                |name: &str| rest.strip_prefix(name).is_some_and(|after| !after.chars().next().is_some_and(is_ident));
            if field(".severity") || field(".environment") {
                continue;
            }
            if field(".namespace") {
                namespace = true;
                continue;
            }
            let key = if let Some(after) = rest.strip_prefix(".labels.") {
                let end = after.find(|c: char| !is_ident(c)).unwrap_or(after.len());
                (end > 0).then(|| &after[..end])
            } else if let Some(after) = rest.strip_prefix(".labels[\"") {
                after.find('"').map(|end| &after[..end]).filter(|k| !k.contains('\\'))
            } else {
                None
            };
            match key {
                Some(key) => keys.push(key.to_owned()),
                None => {
                    all = true;
                    namespace = true;
                }
            }
        }
        keys.sort();
        keys.dedup();
        let labels = if all { LabelsRead::All } else { LabelsRead::Keys(keys) };
        Self { labels, namespace, remediation_path: text.contains("remediation_path") }
    }
}

/// Compiles `text` and checks that it answers a priority for a plain input.
fn compile(path: &str, text: &str) -> Result<regorus::Engine, PolicyError> {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy(path.to_owned(), text.to_owned())
        .map_err(|e| PolicyError::Compile { path: path.to_owned(), cause: e.to_string() })?;
    let labels = HashMap::new();
    let probe =
        Input { severity: "critical", environment: "production", namespace: "default", labels: Layered::own(&labels) };
    priority_of(&mut engine, &probe).map_err(|cause| PolicyError::NoPriority { path: path.to_owned(), cause })?;
    Ok(engine)
}

/// The policy's decision; a failure is logged, counted and decided `P2`.
fn evaluate(engine: &mut regorus::Engine, input: &Input<'_>, defines_path: bool) -> Decision {
    match priority_of(engine, input) {
        Ok(priority) => {
            Decision { priority, remediation_path: defines_path.then(|| remediation_path_of(engine)).flatten() }
        }
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
        "labels": input.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
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

#[cfg(test)]
mod tests;
