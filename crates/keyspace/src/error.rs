//! Redis faults, classified by what the caller should do about them.

/// `Result` of keyspace operations.
pub type Result<T, E = KeyspaceError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum KeyspaceError {
    /// Redis refused a write because `maxmemory` is reached.
    #[error("redis out of memory running {script}")]
    OutOfMemory {
        script: &'static str,
        #[source]
        source: redis::RedisError,
    },
    /// No connection could be had, or it broke (for the embedded store: its journal failed).
    #[error("store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Redis did not answer in time.
    #[error("redis timed out")]
    Timeout,
    /// Redis refused the user and password of the URL (or `password_file`): no
    /// connection will work until the credentials or the ACL are fixed.
    #[error(
        "redis authentication failed for the user of redis.url (wrong password, or the user is unknown or disabled)"
    )]
    Authentication(#[source] redis::RedisError),
    /// The ACL user may not run this (NOPERM).
    #[error("redis permission denied running {script}")]
    Permission {
        script: &'static str,
        #[source]
        source: redis::RedisError,
    },
    /// The script failed or returned something unexpected.
    #[error("redis script {script} failed")]
    Script {
        script: &'static str,
        #[source]
        source: redis::RedisError,
    },
    /// Bad connection settings.
    #[error("invalid redis config: {0}")]
    Config(String),
}

impl KeyspaceError {
    /// A pool checkout that failed. bb8 reports connection errors only to its
    /// error sink and lets the checkout time out, so a timeout with a recent
    /// authentication failure in `last` is that failure, not a slow Redis.
    pub(crate) fn from_pool(e: bb8::RunError<redis::RedisError>, last: &LastConnectError) -> Self {
        match e {
            bb8::RunError::TimedOut => match last.take_auth_failure() {
                Some(auth) => Self::Authentication(auth),
                None => Self::Unavailable("connection pool timed out".into()),
            },
            bb8::RunError::User(e) => Self::from_redis("connect", e),
        }
    }

    pub(crate) fn from_redis(script: &'static str, e: redis::RedisError) -> Self {
        let text = e.to_string();
        let code = e.code().unwrap_or_default();
        if is_auth_failure(&e) {
            Self::Authentication(e)
        } else if code == "OOM" || text.contains("OOM command not allowed") {
            Self::OutOfMemory { script, source: e }
        } else if code == "NOPERM" || text.contains("NOPERM") || text.contains("can't access at least one of the keys")
        {
            Self::Permission { script, source: e }
        } else if e.is_timeout() {
            Self::Timeout
        } else if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
        {
            Self::Unavailable(Box::new(e))
        } else {
            Self::Script { script, source: e }
        }
    }

    /// Bounded label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::OutOfMemory { .. } => "oom",
            Self::Unavailable(_) => "unavailable",
            Self::Timeout => "timeout",
            Self::Authentication(_) => "auth",
            Self::Permission { .. } => "permission",
            Self::Script { .. } => "script",
            Self::Config(_) => "config",
        }
    }
}

fn is_auth_failure(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
}

/// The pool's error sink: keeps the last authentication failure of a new
/// connection, for [`KeyspaceError::from_pool`].
#[derive(Clone, Debug, Default)]
pub(crate) struct LastConnectError(std::sync::Arc<std::sync::Mutex<Option<redis::RedisError>>>);

impl LastConnectError {
    fn take_auth_failure(&self) -> Option<redis::RedisError> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

impl bb8::ErrorSink<redis::RedisError> for LastConnectError {
    fn sink(&self, error: redis::RedisError) {
        if is_auth_failure(&error) {
            *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
        }
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<redis::RedisError>> {
        Box::new(self.clone())
    }
}
