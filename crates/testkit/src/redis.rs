//! A real `redis-server` on a free loopback port, owned by one test.

mod resp;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::binary::{find_on_path, log_tail};
use crate::eventually::Deadline;
use crate::port::{ATTEMPTS, pick_unused_port};

pub use self::resp::{RespConnection, RespValue};

/// How long a started server has to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

const MISSING_BINARY: &str = "redis-server not found on PATH: install it with \
    `apt-get install redis-server` (or run scripts/test, which installs it)";

/// Options for [`RedisServer`]; start with [`RedisServer::builder`].
#[derive(Debug, Clone, Default)]
pub struct RedisServerBuilder {
    /// `--name value` pairs passed after the fixed arguments.
    options: Vec<(String, String)>,
}

impl RedisServerBuilder {
    /// Sets `maxmemory` (e.g. `"16mb"`).
    pub fn maxmemory(self, limit: &str) -> Self {
        self.option("maxmemory", limit)
    }

    /// Sets `maxmemory-policy` (e.g. `"volatile-lru"`, `"noeviction"`).
    pub fn maxmemory_policy(self, policy: &str) -> Self {
        self.option("maxmemory-policy", policy)
    }

    /// Loads users from an ACL file (`--aclfile`).
    ///
    /// The file is the caller's business, but keep the `default` user usable without a
    /// password: [`RedisServer::admin_command`] and readiness checks connect as `default`.
    pub fn acl_file(self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().display().to_string();
        self.option("aclfile", &path)
    }

    /// Passes any other `redis-server` option as `--name value`.
    pub fn option(mut self, name: &str, value: &str) -> Self {
        self.options.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Starts the server and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// Panics when `redis-server` is not on `PATH`, when it exits or does not answer within
    /// 10 s (the message includes its log), or when no free port could be bound.
    pub async fn start(self) -> RedisServer {
        let Some(binary) = find_on_path(&["redis-server"]) else {
            panic!("{MISSING_BINARY}");
        };
        let dir = match tempfile::Builder::new().prefix("breakwater-redis-").tempdir() {
            Ok(dir) => dir,
            Err(err) => panic!("cannot create a temporary directory for redis-server: {err}"),
        };
        let mut server = RedisServer { child: None, port: 0, binary, options: self.options, dir };
        for _ in 0..ATTEMPTS {
            let port = pick_unused_port();
            if let Some(child) = server.launch(port).await {
                server.port = port;
                server.child = Some(child);
                return server;
            }
        }
        panic!("redis-server could not bind a free loopback port in {ATTEMPTS} attempts");
    }
}

/// A `redis-server` child process on `127.0.0.1:port()`, killed on `Drop`.
///
/// Persistence is off (`--save "" --appendonly no`), so a [`restart`](Self::restart) starts
/// with an empty dataset. The working directory is a temporary directory that is removed on
/// `Drop`.
#[derive(Debug)]
pub struct RedisServer {
    /// Declared first so the process is killed before its directory is removed.
    child: Option<Child>,
    port: u16,
    binary: PathBuf,
    options: Vec<(String, String)>,
    dir: TempDir,
}

impl RedisServer {
    /// Options for a server; call [`RedisServerBuilder::start`] to launch it.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// Starts a server with default options; see [`RedisServerBuilder::start`] for panics.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// The TCP port, stable across [`kill`](Self::kill) and [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`, connecting as the `default` user.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis://USER:PASSWORD@127.0.0.1:PORT`, with both parts percent-encoded.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{}:{}@127.0.0.1:{}", percent_encode(user), percent_encode(password), self.port)
    }

    /// The server's log so far (`--logfile`), for debugging a failing test.
    pub fn log(&self) -> String {
        log_tail(&self.log_path(), usize::MAX)
    }

    /// Kills the process (SIGKILL) and waits for it to exit. The port stays reserved in this
    /// struct for [`restart`](Self::restart); clients see connection refused until then.
    ///
    /// # Panics
    ///
    /// Panics when the process cannot be signalled or reaped.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Err(err) = child.kill().await
        {
            panic!("cannot kill redis-server on port {}: {err}", self.port);
        }
    }

    /// Kills the process if it is running and starts it again on the same port with the same
    /// options, waiting until it answers `PING`. The dataset starts empty.
    ///
    /// # Panics
    ///
    /// Panics when the port was taken by another process meanwhile (after retrying for 10 s)
    /// or when the server does not come up.
    pub async fn restart(&mut self) {
        self.kill().await;
        let deadline = Deadline::after(READY_TIMEOUT);
        loop {
            if let Some(child) = self.launch(self.port).await {
                self.child = Some(child);
                return;
            }
            if deadline.expired() {
                panic!("redis-server cannot restart on port {}: another process took the port", self.port);
            }
            deadline.tick().await;
        }
    }

    /// Runs one command as the `default` user on a fresh connection and renders the reply as
    /// text (see [`RespValue`]'s `Display`: arrays become one element per line, `Null` is "").
    ///
    /// Meant for operator actions and inspection: `CONFIG SET maxmemory 1mb`, `INFO memory`,
    /// `DBSIZE`, `TTL key`.
    ///
    /// # Panics
    ///
    /// Panics when the server is unreachable or replies with an error; use
    /// [`admin_resp`](Self::admin_resp) to inspect error replies.
    pub async fn admin_command(&self, args: &[&str]) -> String {
        match self.admin_resp(args).await {
            RespValue::Error(err) => panic!("redis admin command {args:?} failed: {err}"),
            reply => reply.to_string(),
        }
    }

    /// Runs one command as the `default` user and returns the raw reply, errors included.
    ///
    /// # Panics
    ///
    /// Panics when the server is unreachable or the connection breaks.
    pub async fn admin_resp(&self, args: &[&str]) -> RespValue {
        let mut connection = self.admin_connection().await;
        match connection.command(args).await {
            Ok(reply) => reply,
            Err(err) => panic!("redis admin command {args:?} on port {}: {err}", self.port),
        }
    }

    /// A raw RESP connection as the `default` user, for several commands in a row.
    ///
    /// # Panics
    ///
    /// Panics when nothing accepts on the port (was the server killed?).
    pub async fn admin_connection(&self) -> RespConnection {
        match RespConnection::connect(self.port).await {
            Ok(connection) => connection,
            Err(err) => panic!("cannot connect to redis-server on port {} ({err}); was it killed?", self.port),
        }
    }

    /// Keys matching `pattern` (a `SCAN MATCH` glob) that have no TTL (`PTTL` is -1), sorted.
    ///
    /// # Panics
    ///
    /// Panics when the server is unreachable or a reply has an unexpected shape.
    pub async fn keys_without_ttl(&self, pattern: &str) -> Vec<String> {
        let mut connection = self.admin_connection().await;
        let mut keys = Vec::new();
        let mut cursor = String::from("0");
        loop {
            let reply = scan_command(&mut connection, &["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"]).await;
            let RespValue::Array(parts) = reply else {
                panic!("unexpected SCAN reply: {reply:?}");
            };
            let [next, RespValue::Array(batch)] = parts.as_slice() else {
                panic!("unexpected SCAN reply: {parts:?}");
            };
            for key in batch {
                let Some(key) = key.as_text() else {
                    panic!("unexpected key in SCAN reply: {key:?}");
                };
                let ttl = scan_command(&mut connection, &["PTTL", &key]).await;
                if ttl == RespValue::Integer(-1) {
                    keys.push(key);
                }
            }
            match next.as_text() {
                Some(next) if next == "0" => break,
                Some(next) => cursor = next,
                None => panic!("unexpected SCAN cursor: {next:?}"),
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts `redis-server` on `port` and waits until it answers. `None` means the port was
    /// taken by someone else and the caller should try again.
    async fn launch(&self, port: u16) -> Option<Child> {
        let log_path = self.log_path();
        // A stale log from an earlier attempt would make the failure diagnosis lie.
        let _ = std::fs::remove_file(&log_path);
        let port_arg = port.to_string();
        let mut command = Command::new(&self.binary);
        command
            .args(["--port", &port_arg, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log_path);
        for (name, value) in &self.options {
            command.arg(format!("--{name}")).arg(value);
        }
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => panic!("cannot run {}: {err}", self.binary.display()),
        };
        let deadline = Deadline::after(READY_TIMEOUT);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let log = log_tail(&log_path, 30);
                    if log.contains("Address already in use") {
                        return None;
                    }
                    panic!("redis-server on port {port} exited with {status} before answering PING; its log:\n{log}");
                }
                Ok(None) => {}
                Err(err) => panic!("cannot poll the redis-server process: {err}"),
            }
            match answering_pid(port).await {
                // Another test's server answers on the port we picked: we lost the race.
                Some(pid) if Some(pid) != child.id() => {
                    let _ = child.kill().await;
                    return None;
                }
                Some(_) => return Some(child),
                None => {}
            }
            if deadline.expired() {
                let _ = child.kill().await;
                panic!(
                    "redis-server on port {port} did not answer PING within {READY_TIMEOUT:?}; its log:\n{}",
                    log_tail(&log_path, 30)
                );
            }
            deadline.tick().await;
        }
    }
}

/// Runs a command during a scan and panics with context on I/O errors or error replies.
async fn scan_command(connection: &mut RespConnection, args: &[&str]) -> RespValue {
    match connection.command(args).await {
        Ok(RespValue::Error(err)) => panic!("redis command {args:?} failed: {err}"),
        Ok(reply) => reply,
        Err(err) => panic!("redis command {args:?}: {err}"),
    }
}

/// The pid of the Redis server answering `PING` on `port`, if one does.
async fn answering_pid(port: u16) -> Option<u32> {
    let mut connection = RespConnection::connect(port).await.ok()?;
    if connection.command(&["PING"]).await.ok()? != RespValue::Simple("PONG".into()) {
        return None;
    }
    let info = connection.command(&["INFO", "server"]).await.ok()?.as_text()?;
    info.lines().find_map(|line| line.strip_prefix("process_id:")).and_then(|pid| pid.trim().parse().ok())
}

/// A key root unique to one test run: `t-<test name>-<16 random hex digits>`.
///
/// Characters other than ASCII alphanumerics, `-` and `_` in `test_name` become `-`, so the
/// root never contains `:` (the key separator) or glob characters.
pub fn unique_key_root(test_name: &str) -> String {
    let name: String =
        test_name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("t-{name}-{}", &random[..16])
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for URL userinfo.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;

/// A copy of the ACL file `deploy/redis/<file>` of this repository whose
/// `default` user stays usable, as the test's operator: the deploy files turn
/// it off, and [`RedisServer::admin_command`] connects as `default`.
///
/// # Panics
///
/// Panics when the file cannot be read or does not turn the default user off.
pub fn deploy_acl_for_test(file: &str) -> tempfile::NamedTempFile {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/redis").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.contains("user default off"), "{file} turns the default user off");
    let tmp = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("temporary ACL file: {e}"));
    std::fs::write(tmp.path(), text.replace("user default off", "user default on nopass ~* &* +@all"))
        .unwrap_or_else(|e| panic!("writing the test ACL file: {e}"));
    tmp
}
