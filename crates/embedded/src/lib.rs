//! The embedded on-disk store behind `breakwater up`: a directory holding one
//! journaled key-value namespace per service (`dedup`, `storm`,
//! `crd-writer`), where every entry expires, as every Redis key has a TTL.
//!
//! The services keep their state in memory; the store only has to make each
//! change durable and give the state back at start. So it is a journal, not
//! a database: an append per batch, and a snapshot now and then that replaces
//! what it covers and drops what has expired (see `journal.rs` for the files
//! and records).
//!
//! # Durability, like Redis's `appendfsync everysec`
//! [`Namespace::apply`] appends its batch to the journal and hands it to the
//! operating system (a `write`, no `fsync`) before it returns, so a killed
//! process (even `kill -9`) loses nothing that was applied. A background
//! thread fsyncs the journal every second, so a machine crash or power loss
//! loses at most about the last second; a batch cut short by one is dropped
//! whole when the journal is opened. The thread also compacts each namespace
//! every [`Options::sweep_interval`], and sooner once its journal has grown by
//! [`Options::compact_after_bytes`].
//!
//! # Why not an LSM engine
//! Until this journal, the store was fjall, an LSM engine: it kept every
//! write sorted in memory and compacted sorted tables, for reads the services
//! never make. A profile of `up` at 50 new alerts per webhook put 26% of its
//! CPU there. An append is a copy into one buffer and one `write`.
//!
//! # Layout of a state directory
//! `breakwater.lock` (held while a process uses the directory, so a second
//! one fails to start with an error naming it) and `journal/<namespace>/`.

// Library code must not panic on input: failures are typed errors. Tests may
// unwrap (`.clippy.toml` allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use breakwater_signal::{Clock, UnixMillis};

mod journal;

use journal::{Journal, JournalError};

/// Why the embedded store cannot do what was asked. Every variant names the
/// state directory, so an operator knows which one is meant.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// Another process (or another store in this one) uses the directory.
    #[error(
        "state directory {dir} is in use by another breakwater process: stop that process, or give this one a \
         state directory of its own (embedded.dir or --sink-dir)"
    )]
    Locked { dir: PathBuf },
    /// The directory or its lock file cannot be created or opened.
    #[error("cannot open state directory {dir}")]
    Open {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The journal cannot be read or written: I/O, or a write after an
    /// earlier fsync failure (then it refuses every write until restarted).
    #[error("embedded store in {dir} failed")]
    Store {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A namespace name that cannot be a directory name.
    #[error("namespace name {0:?} is not allowed: use lowercase letters, digits, '-' and '_'")]
    BadNamespace(String),
    /// A record of the journal, other than a last one cut short by a crash,
    /// cannot be read: the store will not start from part of its state.
    #[error("embedded store in {dir}: the journal of namespace {namespace} is damaged ({detail})")]
    Damaged { dir: PathBuf, namespace: String, detail: String },
}

pub type Result<T, E = EmbeddedError> = std::result::Result<T, E>;

/// How often the background thread fsyncs and compacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Journal fsync period; default 1 s (`appendfsync everysec`).
    pub fsync_interval: Duration,
    /// Each namespace is compacted this often (expired entries are dropped
    /// then); default 60 s. Expired entries are never returned meanwhile:
    /// [`Namespace::load_live`] skips them.
    pub sweep_interval: Duration,
    /// A namespace whose journal has grown by this many bytes since its last
    /// compaction is compacted at the next fsync; default 64 MiB.
    pub compact_after_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            fsync_interval: Duration::from_secs(1),
            sweep_interval: Duration::from_secs(60),
            compact_after_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One change of a batch. Every put carries its expiry: nothing lives for ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8>, expires_at: UnixMillis },
    Remove { key: Vec<u8> },
}

/// An open state directory; cheap to clone. The directory stays locked, and
/// the background thread runs, until the last clone (and every
/// [`Namespace`] of it) is dropped; the journal is fsynced then.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

/// What handles share. Dropping it stops the background thread, waits for
/// it, fsyncs, then releases the lock (field order matters).
struct Inner {
    shared: Arc<Shared>,
    stop: Option<mpsc::Sender<()>>,
    background: Option<JoinHandle<()>>,
    _lock: File,
}

/// What the background thread needs too. It never holds [`Inner`], so the
/// last handle, not that thread, runs `Inner`'s drop and can wait for it.
struct Shared {
    dir: PathBuf,
    clock: Arc<dyn Clock>,
    namespaces: Mutex<Vec<Arc<NamespaceCore>>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("dir", &self.inner.shared.dir).finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the state directory `dir` with default
    /// [`Options`]; `clock` decides what has expired.
    ///
    /// # Errors
    /// [`EmbeddedError::Locked`] when another process uses `dir`; others when
    /// it cannot be created.
    pub fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::open_with(dir, Options::default(), clock)
    }

    /// [`EmbeddedStore::open`] with other intervals (tests).
    ///
    /// # Errors
    /// As [`EmbeddedStore::open`].
    pub fn open_with(dir: &Path, options: Options, clock: Arc<dyn Clock>) -> Result<Self> {
        let open_err = |source| EmbeddedError::Open { dir: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(open_err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("breakwater.lock"))
            .map_err(open_err)?;
        // An OS lock, not a pid file: it is released when the holder dies, even by kill -9.
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(EmbeddedError::Locked { dir: dir.to_owned() }),
            Err(TryLockError::Error(e)) => return Err(open_err(e)),
        }
        if dir.join("fjall").exists() {
            // Releases before the journal kept their state in `fjall/`.
            tracing::warn!(
                dir = %dir.join("fjall").display(),
                "this directory holds state of an older release's store, which is no longer read; \
                 it may be deleted"
            );
        }
        let shared = Arc::new(Shared { dir: dir.to_owned(), clock, namespaces: Mutex::new(Vec::new()) });
        let (stop, stopped) = mpsc::channel();
        let background = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("embedded-sync".into())
                .spawn(move || background(&shared, &stopped, options))
                .map_err(open_err)?
        };
        Ok(Self { inner: Arc::new(Inner { shared, stop: Some(stop), background: Some(background), _lock: lock }) })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// Now, by the store's clock.
    pub fn now(&self) -> UnixMillis {
        self.inner.shared.clock.now()
    }

    /// The namespace `name` (one per service), created if new.
    ///
    /// # Errors
    /// [`EmbeddedError::BadNamespace`] for a name other than lowercase
    /// letters, digits, `-` and `_`; a storage error otherwise.
    pub fn namespace(&self, name: &str) -> Result<Namespace> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid {
            return Err(EmbeddedError::BadNamespace(name.to_owned()));
        }
        let shared = &self.inner.shared;
        let mut namespaces = shared.namespaces.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(core) = namespaces.iter().find(|core| core.name == name) {
            return Ok(Namespace { store: self.inner.clone(), core: core.clone() });
        }
        let journal = Journal::open(shared.dir.join("journal").join(name)).map_err(|e| shared.journal_err(name, e))?;
        let core = Arc::new(NamespaceCore { name: name.to_owned(), journal });
        namespaces.push(core.clone());
        Ok(Namespace { store: self.inner.clone(), core })
    }

    /// Fsyncs the journal now (the background thread does it every second).
    ///
    /// # Errors
    /// A storage error.
    pub fn sync(&self) -> Result<()> {
        self.inner.shared.sync()
    }
}

impl Shared {
    fn journal_err(&self, namespace: &str, source: JournalError) -> EmbeddedError {
        match source {
            JournalError::Io(source) => EmbeddedError::Store { dir: self.dir.clone(), source },
            failed @ JournalError::Failed { .. } => {
                EmbeddedError::Store { dir: self.dir.clone(), source: std::io::Error::other(failed) }
            }
            damaged @ JournalError::Damaged { .. } => EmbeddedError::Damaged {
                dir: self.dir.clone(),
                namespace: namespace.to_owned(),
                detail: damaged.to_string(),
            },
        }
    }

    fn cores(&self) -> Vec<Arc<NamespaceCore>> {
        self.namespaces.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Fsyncs every namespace's journal; the first failure is returned, after
    /// trying them all.
    fn sync(&self) -> Result<()> {
        let mut first = Ok(());
        for core in self.cores() {
            if let Err(e) = core.journal.sync()
                && first.is_ok()
            {
                first = Err(self.journal_err(&core.name, e));
            }
        }
        first
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(background) = self.background.take() {
            let _ = background.join();
        }
        // A clean stop leaves nothing to the OS's own write-back.
        if let Err(e) = self.shared.sync() {
            tracing::warn!(dir = %self.shared.dir.display(), cause = %e, "final fsync of the state directory failed");
        }
    }
}

/// Fsyncs every `fsync_interval` and compacts every `sweep_interval` (or once
/// a journal has grown by `compact_after_bytes`) until the store is dropped.
fn background(shared: &Shared, stopped: &mpsc::Receiver<()>, options: Options) {
    let mut next_sweep = Instant::now() + options.sweep_interval;
    loop {
        match stopped.recv_timeout(options.fsync_interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Err(e) = shared.sync() {
            // The journal refuses further writes after a failed fsync, so callers see it too.
            tracing::error!(dir = %shared.dir.display(), cause = %e, "fsync of the state directory failed");
        }
        let sweep = Instant::now() >= next_sweep;
        if sweep {
            next_sweep = Instant::now() + options.sweep_interval;
        }
        let now = shared.clock.now();
        for core in shared.cores() {
            if !sweep && core.journal.unsnapshotted_bytes() < options.compact_after_bytes {
                continue;
            }
            if let Err(e) = core.journal.compact(now) {
                tracing::warn!(dir = %shared.dir.display(), namespace = %core.name, cause = %e,
                    "compacting the journal failed; it is retried at the next sweep");
            }
        }
    }
}

/// One service's entries in a state directory. Cheap to clone.
#[derive(Clone)]
pub struct Namespace {
    store: Arc<Inner>,
    core: Arc<NamespaceCore>,
}

struct NamespaceCore {
    name: String,
    journal: Journal,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("dir", &self.store.shared.dir)
            .field("name", &self.core.name)
            .finish_non_exhaustive()
    }
}

impl Namespace {
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The store this namespace belongs to.
    pub fn store(&self) -> EmbeddedStore {
        EmbeddedStore { inner: self.store.clone() }
    }

    /// Writes `ops` atomically and hands them to the OS before returning, so
    /// a process crash after this loses none of them. When a key occurs more
    /// than once, its last op wins, as if applied one by one.
    ///
    /// # Errors
    /// A storage error; then none of `ops` was applied.
    pub fn apply(&self, ops: &[Op]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.core.journal.append(ops).map_err(|e| self.store.shared.journal_err(&self.core.name, e))
    }

    /// Every entry still live at `now`, in key order, for a service to start
    /// from; expired ones are deleted on the way.
    ///
    /// # Errors
    /// A storage error, or [`EmbeddedError::Damaged`].
    pub fn load_live(&self, now: UnixMillis) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let err = |e| self.store.shared.journal_err(&self.core.name, e);
        let mut live = Vec::new();
        let mut expired = Vec::new();
        for (key, (expires_at, value)) in self.core.journal.replay().map_err(err)? {
            if expires_at > now {
                live.push((key, value));
            } else {
                expired.push(Op::Remove { key });
            }
        }
        self.apply(&expired)?;
        Ok(live)
    }

    /// Compacts the journal, dropping the entries expired at `now`; returns
    /// how many. The background thread calls this every
    /// [`Options::sweep_interval`].
    ///
    /// # Errors
    /// A storage error, or [`EmbeddedError::Damaged`].
    pub fn sweep_expired(&self, now: UnixMillis) -> Result<usize> {
        self.core.journal.compact(now).map_err(|e| self.store.shared.journal_err(&self.core.name, e))
    }
}

#[cfg(test)]
mod tests;
