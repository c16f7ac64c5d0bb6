//! The Redis keyspace discipline every stateful Breakwater service follows.
//!
//! # Layout
//! - [`config`] — where Redis is, which key root and budget a service uses.
//! - [`error`] — [`KeyspaceError`] tells OOM, unavailable, timeout, permission and
//!   script faults apart, so each service can apply the degradation table.
//! - [`Keyspace`] — a pool plus the service's key prefix. The only way to change
//!   data is [`Keyspace::run`] with a registered [`Script`] and a [`Ttl`]: the API
//!   cannot express a write without an expiry.
//! - [`budget`] — the drift guard: `maxmemory` and eviction policy against the
//!   service's memory budget.

// Library code must not panic on input: failures are typed errors. Tests may
// unwrap (`.clippy.toml` allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod budget;
pub mod config;
pub mod error;

use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use redis::{FromRedisValue, ToRedisArgs};
use tracing::Instrument as _;
use tracing::field::Empty;

pub use budget::{MemoryReport, budget_problem, is_volatile_policy, nearly_full};
pub use config::{RedisConfig, StoreKind, redact_credentials, redact_url};
pub use error::{KeyspaceError, Result};

/// A Lua script, registered by name; runs as EVALSHA with a reload on NOSCRIPT.
#[derive(Debug)]
pub struct Script {
    name: &'static str,
    script: redis::Script,
}

impl Script {
    /// `source` must give every key it writes a TTL: `ARGV[1]` (milliseconds),
    /// or one it computes that is never longer than `ARGV[1]`. It must start
    /// with the `#!lua` shebang (Redis 7): then Redis refuses the whole script
    /// when out of memory, instead of letting it write past `maxmemory` once
    /// its first write was a command allowed under OOM, such as `DEL`.
    pub fn new(name: &'static str, source: &str) -> Self {
        debug_assert!(source.starts_with("#!lua"), "script {name} must start with #!lua");
        Self { name, script: redis::Script::new(source) }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The expiry every write carries, in milliseconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(u64);

impl Ttl {
    pub fn from_duration(d: Duration) -> Self {
        Self(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1))
    }

    pub fn from_millis(ms: u64) -> Self {
        Self(ms.max(1))
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }
}

/// One service's share of a Redis server: a connection pool and a key prefix
/// (`<root>:<component>:`). Every key the service touches starts with it.
#[derive(Clone)]
pub struct Keyspace {
    pool: bb8::Pool<RedisConnectionManager>,
    /// Why new connections fail, when Redis refuses the credentials.
    last_connect_error: error::LastConnectError,
    prefix: String,
    /// The owning component (`dedup` of `breakwater:dedup:`), for spans and metrics.
    component: String,
}

impl std::fmt::Debug for Keyspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyspace").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Keyspace {
    /// Builds the pool lazily: nothing connects until the first command, so a
    /// service starts (degraded) while its Redis is down.
    ///
    /// # Errors
    /// [`KeyspaceError::Config`] when the URL does not parse or the password
    /// file cannot be read.
    pub fn from_config(config: &RedisConfig, component: &str) -> Result<Self> {
        let info = config.connection_info().map_err(|why| KeyspaceError::Config(format!("redis.{why}")))?;
        // Small requests and replies: Nagle's algorithm would only add latency.
        let info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let info = match &config.ca_file {
            // rediss:// with its own CA; without one, rustls trusts the system's CAs.
            Some(ca) if config.url.starts_with("rediss://") => {
                let root_cert = std::fs::read(ca).map_err(|e| {
                    KeyspaceError::Config(format!("redis.ca_file {}: cannot read it: {e}", ca.display()))
                })?;
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
                redis::Client::build_with_tls(info, certs)
                    .map_err(|e| KeyspaceError::Config(format!("redis.ca_file {}: {e}", ca.display())))?
                    .get_connection_info()
                    .clone()
            }
            _ => info,
        };
        let manager = RedisConnectionManager::new(info)
            .map_err(|e| KeyspaceError::Config(format!("redis.url {:?}: {e}", redact_url(&config.url))))?;
        let last_connect_error = error::LastConnectError::default();
        let pool = bb8::Pool::builder()
            .error_sink(Box::new(last_connect_error.clone()))
            .max_size(config.pool_size)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
            .retry_connection(false)
            // bb8-redis cannot tell a broken connection on return, so the PING on
            // checkout is what replaces connections after Redis restarts.
            .test_on_check_out(true)
            .build_unchecked(manager);
        let mut keyspace = Self::new(pool, format!("{}:{component}:", config.key_root));
        keyspace.last_connect_error = last_connect_error;
        Ok(keyspace)
    }

    pub fn new(pool: bb8::Pool<RedisConnectionManager>, prefix: String) -> Self {
        let component = prefix.trim_end_matches(':').rsplit(':').next().unwrap_or_default().to_owned();
        Self { pool, prefix, component, last_connect_error: error::LastConnectError::default() }
    }

    /// The prefix of every key of this keyspace, e.g. `bw:dedup:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix><suffix>`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// Runs `script` atomically over `keys` (already prefixed) with `ttl` as
    /// `ARGV[1]` followed by `args`.
    ///
    /// # Errors
    /// A classified [`KeyspaceError`].
    pub async fn run<T: FromRedisValue, A: ToRedisArgs>(
        &self,
        script: &Script,
        keys: &[String],
        ttl: Ttl,
        args: &[A],
    ) -> Result<T> {
        // Names only: key suffixes and arguments carry alert data and stay out of spans.
        let span = tracing::info_span!(
            "redis",
            otel.name = %format_args!("EVALSHA {}", script.name),
            otel.kind = "client",
            otel.status_code = Empty,
            db.system = "redis",
            db.operation = "EVALSHA",
            db.redis.script = script.name,
            db.redis.key_prefix = %self.prefix,
            db.redis.keys = keys.len(),
            error.kind = Empty,
            breakwater.component = %self.component,
        );
        let start = std::time::Instant::now();
        let result = async {
            let mut conn = self.pool.get().await.map_err(|e| KeyspaceError::from_pool(e, &self.last_connect_error))?;
            let mut invocation = script.script.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            invocation.arg(ttl.as_millis());
            for arg in args {
                invocation.arg(arg);
            }
            invocation.invoke_async(&mut *conn).await.map_err(|e| KeyspaceError::from_redis(script.name, e))
        }
        .instrument(span.clone())
        .await;
        metrics::histogram!("breakwater_redis_script_duration_seconds",
            "component" => self.component.clone(), "script" => script.name)
        .record(start.elapsed().as_secs_f64());
        if let Err(e) = &result {
            span.record("otel.status_code", "error").record("error.kind", e.metric_label());
            metrics::counter!("breakwater_redis_errors_total",
                "component" => self.component.clone(), "kind" => e.metric_label())
            .increment(1);
        }
        result
    }

    /// Proves at start-up that this keyspace is writable with the configured
    /// credentials: a key under the prefix, expiring in a second.
    ///
    /// # Errors
    /// [`KeyspaceError::Permission`] when the Redis user may not write here,
    /// e.g. it is another service's user; other errors as classified.
    pub async fn probe_write(&self) -> Result<()> {
        static PROBE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
            Script::new("probe", "#!lua\nreturn redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])")
        });
        let _: redis::Value = self.run(&PROBE, &[self.key("probe")], Ttl::from_millis(1_000), &[] as &[u8]).await?;
        Ok(())
    }

    /// A read-only command, for health and budget checks (`PING`, `INFO`, `CONFIG GET`).
    ///
    /// # Errors
    /// A classified [`KeyspaceError`].
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let mut conn = self.pool.get().await.map_err(|e| KeyspaceError::from_pool(e, &self.last_connect_error))?;
        cmd.query_async(&mut *conn).await.map_err(|e| KeyspaceError::from_redis("query", e))
    }
}
