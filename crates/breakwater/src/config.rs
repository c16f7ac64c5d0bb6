//! The one configuration of every component: a TOML file, then environment
//! overrides, then flags; validated before anything starts.
//!
//! Environment variables are `BREAKWATER_<SECTION>__<KEY>[__<SUBKEY>…]`, e.g.
//! `BREAKWATER_DEDUP__REDIS__URL=redis://dedup@redis:6379` or
//! `BREAKWATER_STORM__RATE_THRESHOLD=20`; a value is read with the type of the
//! key it overrides. Any other `BREAKWATER_*` variable is not configuration and
//! is ignored: Kubernetes sets `BREAKWATER_EDGE_PORT=tcp://…` and the like in
//! every pod of a namespace with a `breakwater-edge` Service, and
//! `BREAKWATER_CONFIG` names the file. [`likely_env_typos`] lists the ignored
//! ones that look like a misspelt override, for a warning.
//!
//! No message of this module shows a password: URLs in them are passed through
//! [`redact_credentials`](breakwater_keyspace::redact_credentials), and TOML
//! syntax errors give a position, not the line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use breakwater_crd_writer::CrdWriterConfig;
use breakwater_dedup::DedupConfig;
use breakwater_edge::EdgeConfig;
use breakwater_keyspace::redact_credentials;
use breakwater_ratelimit::RateLimitConfig;
use breakwater_storm::StormConfig;
use breakwater_telemetry::TelemetryConfig;
use breakwater_telemetry::redact_endpoint;
use serde::{Deserialize, Serialize};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "BREAKWATER_";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: ListenConfig,
    pub edge: EdgeConfig,
    pub ratelimit: RateLimitConfig,
    pub dedup: DedupConfig,
    pub storm: StormConfig,
    pub crd_writer: CrdWriterConfig,
    pub telemetry: TelemetryConfig,
    pub embedded: EmbeddedConfig,
    /// TLS of the edge's listener and the split-mode gRPC servers.
    pub tls: breakwater_grpc::tls::ServerTls,
}

/// Where services with `store = "embedded"` keep their state (`[embedded]`):
/// dedup and storm, which `breakwater up` runs on the embedded store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// The state directory, locked by the one process using it. Default:
    /// `.breakwater-state` inside `crd_writer.directory` (so `--sink-dir`
    /// moves it too; no namespace starts with a dot), or `./breakwater-state`
    /// with the Kubernetes sink. Split-mode `dedup` and `storm` on the
    /// embedded store need one each.
    pub dir: Option<PathBuf>,
}

/// The state directory's name inside the CR directory.
pub const STATE_DIR_NAME: &str = ".breakwater-state";

/// Where each component listens when run on its own (`breakwater edge`, …).
/// `breakwater up` uses `edge` and puts the others on loopback ports of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// HTTP edge. Default 127.0.0.1:8080.
    pub edge: SocketAddr,
    /// The edge's gRPC ingest API (`breakwater.v1.IngestService`), served by
    /// `breakwater edge` and `breakwater up` when set. Default unset: off.
    pub ingest: Option<SocketAddr>,
    /// gRPC components. Defaults 127.0.0.1:9101..9104.
    pub ratelimit: SocketAddr,
    pub dedup: SocketAddr,
    pub storm: SocketAddr,
    pub crd_writer: SocketAddr,
    /// gRPC server reflection on the split-mode components' listeners: `auto`
    /// (default: only on a loopback address, so `grpcurl` works on a
    /// workstation and a pod on 0.0.0.0 does not hand out its API map),
    /// `on` or `off`. `breakwater up` has no gRPC listener, so none there.
    pub grpc_reflection: breakwater_grpc::Reflection,
}

impl Default for ListenConfig {
    fn default() -> Self {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Self {
            edge: at(8080),
            ingest: None,
            ratelimit: at(9101),
            dedup: at(9102),
            storm: at(9103),
            crd_writer: at(9104),
            grpc_reflection: breakwater_grpc::Reflection::Auto,
        }
    }
}

/// Why the configuration cannot be used; the message is for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    /// The position and the parser's complaint, never the line itself: it may hold a password.
    #[error("config file {path} is not valid TOML at line {line}, column {column}: {message}")]
    Syntax { path: String, line: usize, column: usize, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// The defaults of `breakwater up`: dedup and storm on the embedded
    /// store; everything else as [`Config::default`] (split mode, tests).
    pub fn up_defaults() -> Self {
        let mut config = Self::default();
        config.dedup.store = breakwater_keyspace::StoreKind::Embedded;
        config.storm.store = breakwater_keyspace::StoreKind::Embedded;
        config
    }

    /// Where `store = "embedded"` keeps its state: `embedded.dir`, else
    /// beside the CRs (see [`EmbeddedConfig::dir`]).
    pub fn state_dir(&self) -> PathBuf {
        match (&self.embedded.dir, self.crd_writer.sink) {
            (Some(dir), _) => dir.clone(),
            (None, breakwater_crd_writer::SinkKind::Directory) => self.crd_writer.directory.join(STATE_DIR_NAME),
            (None, breakwater_crd_writer::SinkKind::Kubernetes) => PathBuf::from("breakwater-state"),
        }
    }

    /// Loads `file` (if any), applies `env` overrides, and validates.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key, the bad value and what is allowed.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::load_over(Self::default(), file, env)
    }

    /// [`Config::load`] over other `defaults` (those of `up`): a key the file
    /// or environment leaves unset keeps its value from `defaults`.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_over(defaults: Self, file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let text = match file {
            Some(path) => Some((
                path.display().to_string(),
                std::fs::read_to_string(path)
                    .map_err(|cause| ConfigError::Read { path: path.display().to_string(), cause })?,
            )),
            None => None,
        };
        Self::parse_over(defaults, text.as_ref().map(|(path, text)| (path.as_str(), text.as_str())), env)
    }

    /// [`Config::load_over`] of a file's text, `(name, text)`, instead of a path: the one
    /// parser that files, the fuzz target `config` and its corpus test go through.
    ///
    /// # Errors
    /// As [`Config::load`], but never [`ConfigError::Read`].
    pub fn parse_over(
        defaults: Self,
        file: Option<(&str, &str)>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut table = toml::Table::try_from(defaults).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some((path, text)) = file {
            let from_file: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                let (line, column) = line_and_column(text, e.span().map_or(0, |span| span.start));
                ConfigError::Syntax {
                    path: path.to_owned(),
                    line,
                    column,
                    message: redact_credentials(e.message().trim_end()),
                }
            })?;
            merge(&mut table, from_file);
        }
        let mut overrides: Vec<(&String, Vec<String>, &String)> =
            env.iter().filter_map(|(name, raw)| Some((name, override_path(name)?, raw))).collect();
        overrides.sort();
        for (name, path, raw) in overrides {
            set_path(&mut table, &path, raw)
                .map_err(|why| ConfigError::Invalid(redact_credentials(&format!("{name}: {why}"))))?;
        }
        let config: Self = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::Invalid(redact_credentials(&format!("{}: {}", e.path(), e.inner()))))?;
        config.validate().map_err(|why| ConfigError::Invalid(redact_credentials(&why)))?;
        Ok(config)
    }

    /// The configuration as TOML, every key with its value and passwords in
    /// URLs replaced by `***`: what `breakwater config check` prints.
    ///
    /// # Errors
    /// When the configuration cannot be written as TOML (a bug, not input).
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        let mut shown = self.clone();
        // An OTLP endpoint may carry a token as its user or in its query.
        shown.telemetry.otlp_endpoint = shown.telemetry.otlp_endpoint.as_deref().map(redact_endpoint);
        let text = toml::to_string(&shown).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(redact_credentials(&text))
    }

    /// # Errors
    /// The first problem found, as a sentence naming the key.
    pub fn validate(&self) -> Result<(), String> {
        self.edge.validate()?;
        self.edge.auth.check_listen(self.listen.edge, "listen.edge")?;
        if let Some(ingest) = self.listen.ingest {
            self.edge.auth.check_listen(ingest, "listen.ingest")?;
        }
        self.ratelimit.validate()?;
        self.dedup.validate()?;
        self.storm.validate()?;
        self.crd_writer.validate()?;
        self.telemetry.validate()?;
        self.tls.validate("tls")?;
        if self.embedded.dir.as_ref().is_some_and(|dir| dir.as_os_str().is_empty()) {
            return Err("embedded.dir = \"\" is not allowed: use a directory path".to_owned());
        }
        // Repeats of alerts folded into a storm are counted while their dedup
        // window is open, so the storm's counter must live at least as long.
        if self.storm.count_ttl_secs < self.dedup.window_secs {
            return Err(format!(
                "storm.count_ttl_secs = {} is not allowed: use at least dedup.window_secs ({})",
                self.storm.count_ttl_secs, self.dedup.window_secs
            ));
        }
        Ok(())
    }
}

/// The key path of a configuration variable, `BREAKWATER_DEDUP__REDIS__URL` →
/// `["dedup", "redis", "url"]`; `None` for every other variable, however it starts.
fn override_path(name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
    (path.len() >= 2 && path.iter().all(|part| !part.is_empty())).then_some(path)
}

/// What to tell the operator about a variable [`likely_env_typos`] lists.
pub const ENV_TYPO_HINT: &str = "is ignored: overrides are BREAKWATER_<SECTION>__<KEY>, with two underscores";

/// Ignored `BREAKWATER_*` variables that look like a misspelt override: a
/// section name followed by one underscore (`BREAKWATER_DEDUP_WINDOW_SECS`).
/// Kubernetes service links (`…_SERVICE_HOST`, `…_PORT`, `…_PORT_8080_TCP_ADDR`)
/// are not listed: every pod gets them, and they are never meant for us.
pub fn likely_env_typos(env: &HashMap<String, String>) -> Vec<String> {
    let sections: Vec<String> = toml::Table::try_from(Config::default())
        .map(|table| table.keys().map(|key| format!("{}_", key.to_uppercase())).collect())
        .unwrap_or_default();
    let mut typos: Vec<String> = env
        .keys()
        .filter(|name| override_path(name).is_none())
        .filter_map(|name| Some((name, name.strip_prefix(ENV_PREFIX)?)))
        .filter(|(_, rest)| sections.iter().any(|section| rest.starts_with(section.as_str())))
        .filter(|(_, rest)| !is_service_link(rest))
        .map(|(name, _)| name.clone())
        .collect();
    typos.sort();
    typos
}

/// Whether `rest` (after `BREAKWATER_`) has the shape of a variable Kubernetes
/// sets for a Service: `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<PORT>]`,
/// `<NAME>_PORT` or `<NAME>_PORT_<n>_<PROTO>[_…]`.
fn is_service_link(rest: &str) -> bool {
    rest.contains("_SERVICE_HOST")
        || rest.contains("_SERVICE_PORT")
        || rest.ends_with("_PORT")
        || rest.split("_PORT_").nth(1).is_some_and(|after| after.starts_with(|c: char| c.is_ascii_digit()))
}

/// 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Merges `from` into `into`, tables recursively, other values replaced.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(new)) => merge(existing, new),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Sets `path` to `raw`, read with the type of the value it replaces (a
/// string when the key is new, so `deny_unknown_fields` can name it).
fn set_path(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else { return Err("empty key".into()) };
    let mut current = table;
    for part in parents {
        let entry = current.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry.as_table_mut().ok_or_else(|| format!("{part} is not a section"))?;
    }
    let typed = match current.get(last) {
        Some(toml::Value::String(_)) | None => toml::Value::String(raw.to_owned()),
        Some(toml::Value::Integer(_)) => {
            toml::Value::Integer(raw.trim().parse().map_err(|_| format!("{raw:?} is not an integer"))?)
        }
        Some(toml::Value::Float(_)) => {
            toml::Value::Float(raw.trim().parse().map_err(|_| format!("{raw:?} is not a number"))?)
        }
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(raw.trim().parse().map_err(|_| format!("{raw:?} is not true or false"))?)
        }
        Some(_) => {
            let doc: toml::Table =
                format!("v = {raw}").parse().map_err(|_| format!("{raw:?} is not a TOML value for this key"))?;
            doc.get("v").cloned().ok_or_else(|| format!("{raw:?} is not a TOML value"))?
        }
    };
    current.insert(last.clone(), typed);
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod state_dir_tests {
    use super::*;
    use breakwater_keyspace::StoreKind;

    #[test]
    fn up_defaults_to_the_embedded_store_beside_the_crs_and_a_file_can_say_otherwise() {
        let up = Config::load_over(Config::up_defaults(), None, &HashMap::new()).unwrap();
        assert_eq!(
            (up.dedup.store, up.storm.store, up.ratelimit.store),
            (StoreKind::Embedded, StoreKind::Embedded, StoreKind::Memory)
        );
        assert_eq!(up.state_dir(), Path::new("./remediations").join(".breakwater-state"));
        // Split mode keeps the memory store.
        assert_eq!(Config::load(None, &HashMap::new()).unwrap().dedup.store, StoreKind::Memory);
        let env: HashMap<String, String> =
            [("BREAKWATER_DEDUP__STORE", "memory"), ("BREAKWATER_EMBEDDED__DIR", "state-here")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        let c = Config::load_over(Config::up_defaults(), None, &env).unwrap();
        assert_eq!((c.dedup.store, c.storm.store), (StoreKind::Memory, StoreKind::Embedded));
        assert_eq!(c.state_dir(), Path::new("state-here"));
    }

    #[test]
    fn bad_state_settings_are_refused_with_the_key_named() {
        let env = |k: &str, v: &str| [(k.to_owned(), v.to_owned())].into_iter().collect::<HashMap<_, _>>();
        let err = Config::load(None, &env("BREAKWATER_EMBEDDED__DIR", "")).unwrap_err().to_string();
        assert_eq!(err, "embedded.dir = \"\" is not allowed: use a directory path");
        let err = Config::load(None, &env("BREAKWATER_RATELIMIT__STORE", "embedded")).unwrap_err().to_string();
        assert!(err.starts_with("ratelimit.store = \"embedded\" is not allowed"), "{err}");
    }
}
