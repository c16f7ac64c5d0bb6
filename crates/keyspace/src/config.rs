//! Redis connection settings of one service.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which store a stateful service keeps its state in (`store = "memory"`,
/// `"embedded"` or `"redis"` in its config section).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In-process only: state is lost on restart. The default of the split-mode
    /// services; for tests.
    #[default]
    Memory,
    /// In-process, journaled to a state directory on local disk (`embedded.dir`):
    /// a crashed process loses nothing, a crashed machine at most the last
    /// second. What `breakwater up` uses for dedup and storm.
    Embedded,
    /// Redis: state survives restarts and is shared by replicas.
    Redis,
}

/// Where a service's Redis is and how the service uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host:port[/db]`. Each service should connect as
    /// its own ACL user (see `deploy/redis/`). Give the password here or in
    /// `password_file`, not both.
    pub url: String,
    /// A file holding the password of `url`'s user (a mounted Kubernetes
    /// Secret), read at start: restart to pick up a rotated Secret. One
    /// trailing newline is ignored. Default: unset, the password is in `url`.
    pub password_file: Option<PathBuf>,
    /// PEM CA bundle that signed the server's certificate, for `rediss://`.
    /// Unset: the system's trusted CAs.
    pub ca_file: Option<PathBuf>,
    /// First part of every key; tests give each run its own root.
    pub key_root: String,
    /// Maximum pooled connections.
    pub pool_size: u32,
    /// How long to wait for a connection before the store counts as unavailable.
    pub connect_timeout_ms: u64,
    /// The memory this service's keyspace may use, in bytes. Its Redis must
    /// have at least this much `maxmemory` (reference topology: exactly this,
    /// one Redis per service). Default 64 MiB.
    pub memory_budget_bytes: u64,
    /// How often `maxmemory`, the eviction policy and used memory are checked
    /// against the budget, in seconds. Default 30.
    pub budget_check_secs: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            password_file: None,
            ca_file: None,
            key_root: "bw".into(),
            pool_size: 16,
            connect_timeout_ms: 1_000,
            memory_budget_bytes: 64 * 1024 * 1024,
            budget_check_secs: 30,
        }
    }
}

impl RedisConfig {
    /// Checks the values a service cannot run with; the message names the key
    /// under `section`, the bad value and what is allowed.
    ///
    /// # Errors
    /// A sentence for the operator.
    pub fn validate(&self, section: &str) -> Result<(), String> {
        // The URL may hold a password: messages show it redacted.
        if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://") || self.url.starts_with("unix://")) {
            return Err(format!(
                "{section}.redis.url = {:?} is not a Redis URL: use redis://host:port, rediss://host:port or unix:///path",
                redact_url(&self.url)
            ));
        }
        let info = self.url_info().map_err(|why| format!("{section}.redis.{why}"))?;
        if let Some(file) = &self.password_file {
            if info.redis_settings().password().is_some() {
                return Err(format!(
                    "{section}.redis.password_file = {:?} is not allowed with a password in {section}.redis.url: \
                     remove the password from the URL",
                    file.display().to_string()
                ));
            }
            if file.as_os_str().is_empty() {
                return Err(format!("{section}.redis.password_file = \"\" is not allowed: use a file path"));
            }
        }
        if self.key_root.is_empty() || self.key_root.contains([':', ' ', '*', '?', '[']) {
            return Err(format!(
                "{section}.redis.key_root = {:?} is not allowed: use a non-empty name without ':', spaces or glob characters",
                self.key_root
            ));
        }
        if self.pool_size == 0 {
            return Err(format!("{section}.redis.pool_size = 0 is not allowed: use at least 1"));
        }
        if self.connect_timeout_ms == 0 {
            return Err(format!("{section}.redis.connect_timeout_ms = 0 is not allowed: use at least 1"));
        }
        if self.memory_budget_bytes < 1024 * 1024 {
            return Err(format!(
                "{section}.redis.memory_budget_bytes = {} is not allowed: use at least 1048576 (1 MiB)",
                self.memory_budget_bytes
            ));
        }
        if !(1..=3600).contains(&self.budget_check_secs) {
            return Err(format!(
                "{section}.redis.budget_check_secs = {} is not allowed: use 1..=3600",
                self.budget_check_secs
            ));
        }
        Ok(())
    }

    /// How to connect: `url`, with the password read from `password_file` when set.
    ///
    /// # Errors
    /// A sentence for the operator that starts with the key at fault (`url …`,
    /// `password_file …`) and never shows the password: the URL does not parse, or
    /// the password file cannot be read or is empty.
    pub fn connection_info(&self) -> Result<redis::ConnectionInfo, String> {
        let info = self.url_info()?;
        let Some(file) = &self.password_file else { return Ok(info) };
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("password_file {:?} cannot be read: {e}", file.display().to_string()))?;
        // Secrets written with `echo` or an editor end in a newline that is not part of the password.
        let password = text.strip_suffix('\n').map_or(text.as_str(), |p| p.strip_suffix('\r').unwrap_or(p));
        if password.is_empty() {
            return Err(format!("password_file {:?} is empty", file.display().to_string()));
        }
        let settings = info.redis_settings().clone().set_password(password);
        Ok(info.set_redis_settings(settings))
    }

    fn url_info(&self) -> Result<redis::ConnectionInfo, String> {
        redis::IntoConnectionInfo::into_connection_info(self.url.as_str()).map_err(|e| {
            format!("url {:?} does not parse: {}", redact_url(&self.url), redact_credentials(&e.to_string()))
        })
    }
}

/// `url` with its user and password replaced by `***` (`redis://***@host`), whatever
/// characters they hold: everything between `://` and the last `@` is userinfo, so
/// `http://host:80/a@b` shows as `http://***@b`. A user alone can be a token
/// (`https://TOKEN@host`), so it goes too.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", redact_userinfo(rest)),
        None => url.to_owned(),
    }
}

/// `text` with the user and password of every `scheme://user:password@host` in it
/// replaced by `***`, so a message or a printed config can show URLs. A URL in `text`
/// ends at whitespace or a quote; a lone URL is better given to [`redact_url`].
pub fn redact_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (before, after) = rest.split_at(start + 3);
        out.push_str(before);
        let end = after.find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`')).unwrap_or(after.len());
        let (url, tail) = after.split_at(end);
        out.push_str(&redact_userinfo(url));
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// `after_scheme` (`user:password@host/…`) with the userinfo, up to the last `@`, as `***`.
fn redact_userinfo(after_scheme: &str) -> String {
    match after_scheme.rfind('@') {
        Some(at) => format!("***{}", &after_scheme[at..]),
        None => after_scheme.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKER: &str = "Marker-Pw-7f3a";

    #[test]
    fn passwords_in_urls_are_redacted_wherever_they_appear() {
        assert_eq!(redact_credentials("redis://u:p@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redact_credentials("redis://:p@h"), "redis://***@h");
        assert_eq!(redact_credentials("https://token@h"), "https://***@h");
        assert_eq!(redact_credentials("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact_credentials("a \"rediss://u:p@q@h\" and http://x:y@z/p?q=1"),
            "a \"rediss://***@h\" and http://***@z/p?q=1"
        );
        // Base64 passwords hold '/', '+' and '='.
        assert_eq!(redact_credentials("redis://u:a/b+c=d#e@h/0"), "redis://***@h/0");
        assert_eq!(redact_url("redis://u:a\"b c@h:6379"), "redis://***@h:6379");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_credentials("no url here"), "no url here");
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        for url in [
            format!("http://bw:{MARKER}@redis:6379"),
            format!("redis://bw:{MARKER}@redis:notaport"),
            format!("redis://bw:{MARKER}@redis:6379/db-not-a-number"),
            format!("redis://bw:a\"{MARKER} x@redis:port"),
        ] {
            let config = RedisConfig { url, ..Default::default() };
            let err = config.validate("dedup").unwrap_err();
            assert!(err.starts_with("dedup.redis.url"), "{err}");
            assert!(!err.contains(MARKER), "{err}");
        }
    }

    #[test]
    fn the_password_comes_from_its_file_without_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, format!("{MARKER}\n")).unwrap();
        let config = RedisConfig {
            url: "redis://bw-dedup@redis:6379".into(),
            password_file: Some(file.clone()),
            ..Default::default()
        };
        assert_eq!(config.validate("dedup"), Ok(()));
        let info = config.connection_info().unwrap();
        assert_eq!(info.redis_settings().username(), Some("bw-dedup"));
        assert_eq!(info.redis_settings().password(), Some(MARKER));

        let both = RedisConfig { url: format!("redis://bw:{MARKER}@redis"), ..config.clone() };
        let err = both.validate("dedup").unwrap_err();
        assert!(err.contains("remove the password from the URL") && !err.contains(MARKER), "{err}");

        let missing = RedisConfig { password_file: Some(dir.path().join("absent")), ..config };
        assert!(missing.connection_info().unwrap_err().contains("cannot be read"));
    }
}
