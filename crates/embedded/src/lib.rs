//! The embedded on-disk store behind `breakwater up`: a directory holding one
//! journaled key-value namespace per service (`dedup`, `storm`), where every
//! entry expires, as every Redis key has a TTL.
//!
//! # Durability, like Redis's `appendfsync everysec`
//! [`Namespace::apply`] appends its batch to the journal and hands it to the
//! operating system (a `write`, no `fsync`) before it returns, so a killed
//! process (even `kill -9`) loses nothing that was applied. A background
//! thread fsyncs the journal every second, so a machine crash or power loss
//! loses at most about the last second. The thread also deletes expired
//! entries every [`Options::sweep_interval`].
//!
//! # Why fjall
//! [fjall](https://docs.rs/fjall) is a pure-Rust LSM store with a write-ahead
//! journal: a write is one buffered append, and "flush the buffer to the OS"
//! is a per-batch option, which is exactly the guarantee above. redb, the
//! other well-kept candidate, copies B-tree pages on commit; its non-durable
//! commits are only persisted by a later durable commit, so they do not
//! survive a process crash, and a durable commit per request costs an fsync.
//! fjall 2 is used: fjall 3 needs Rust 1.90, above the workspace's 1.89.
//!
//! Measured on the 2-core build machine (`cargo run --release -p
//! breakwater-embedded --example apply_rate`), 60-byte values, each batch
//! flushed to the OS before the next: 270,000 to 340,000 one-put batches/s,
//! and 430,000 to 490,000 puts/s in batches of 50 (two runs); start-up reads
//! about a million entries/s. A dedup or storm call costs one batch, so the store is far from
//! the gateway's bottleneck.
//!
//! # Layout of a state directory
//! `breakwater.lock` (held while a process uses the directory, so a second
//! one fails to start with an error naming it) and `fjall/` (the journal and
//! tables). Each value on disk is its expiry (8 bytes, Unix milliseconds)
//! followed by the caller's bytes.

// Library code must not panic on input: failures are typed errors. Tests may
// unwrap (`.clippy.toml` allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use breakwater_signal::{Clock, UnixMillis};
use fjall::{PartitionCreateOptions, PartitionHandle, PersistMode};

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
    /// The storage engine failed: I/O, a damaged journal, or a write after an
    /// earlier fsync failure (then it refuses every write until restarted).
    #[error("embedded store in {dir} failed")]
    Store {
        dir: PathBuf,
        #[source]
        source: fjall::Error,
    },
    /// A namespace name the engine cannot use as a directory name.
    #[error("namespace name {0:?} is not allowed: use lowercase letters, digits, '-' and '_'")]
    BadNamespace(String),
    /// An entry on disk is shorter than its expiry header.
    #[error("embedded store in {dir}: entry of namespace {namespace} is damaged")]
    Damaged { dir: PathBuf, namespace: String },
}

pub type Result<T, E = EmbeddedError> = std::result::Result<T, E>;

/// How often the background thread fsyncs and sweeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Journal fsync period; default 1 s (`appendfsync everysec`).
    pub fsync_interval: Duration,
    /// Expired entries are deleted this often; default 60 s. They are never
    /// returned meanwhile: [`Namespace::load_live`] skips them.
    pub sweep_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { fsync_interval: Duration::from_secs(1), sweep_interval: Duration::from_secs(60) }
    }
}

/// One change of a batch. Every put carries its expiry: nothing lives for ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8>, expires_at: UnixMillis },
    Remove { key: Vec<u8> },
}

impl Op {
    fn key(&self) -> &[u8] {
        match self {
            Self::Put { key, .. } | Self::Remove { key } => key,
        }
    }
}

/// An open state directory; cheap to clone. The directory stays locked, and
/// the background thread runs, until the last clone (and every
/// [`Namespace`] of it) is dropped; the journal is fsynced then.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

/// What handles share. Dropping it stops the background thread, waits for
/// it, closes the engine, then releases the lock (field order matters).
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
    keyspace: fjall::Keyspace,
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
    /// it cannot be created or its journal cannot be recovered.
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
        let keyspace = fjall::Config::new(dir.join("fjall"))
            // Two cores: one flush and one compaction thread are plenty for a few
            // small entries per request; the cache only serves start-up and sweeps.
            .flush_workers(1)
            .compaction_workers(1)
            .cache_size(8 * 1024 * 1024)
            .max_write_buffer_size(16 * 1024 * 1024)
            .open()
            .map_err(|source| EmbeddedError::Store { dir: dir.to_owned(), source })?;
        let shared = Arc::new(Shared { dir: dir.to_owned(), keyspace, clock, namespaces: Mutex::new(Vec::new()) });
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
        let partition = shared
            .keyspace
            .open_partition(name, PartitionCreateOptions::default())
            .map_err(|source| shared.store_err(source))?;
        let core = Arc::new(NamespaceCore { name: name.to_owned(), partition, writer: Mutex::new(()) });
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
    fn store_err(&self, source: fjall::Error) -> EmbeddedError {
        EmbeddedError::Store { dir: self.dir.clone(), source }
    }

    fn sync(&self) -> Result<()> {
        self.keyspace.persist(PersistMode::SyncAll).map_err(|e| self.store_err(e))
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

/// Fsyncs every `fsync_interval` and sweeps every `sweep_interval` until the
/// store is dropped.
fn background(shared: &Shared, stopped: &mpsc::Receiver<()>, options: Options) {
    let mut next_sweep = Instant::now() + options.sweep_interval;
    loop {
        match stopped.recv_timeout(options.fsync_interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Err(e) = shared.sync() {
            // fjall refuses further writes after a failed fsync, so callers see it too.
            tracing::error!(dir = %shared.dir.display(), cause = %e, "fsync of the state directory failed");
        }
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now() + options.sweep_interval;
            let now = shared.clock.now();
            let namespaces = shared.namespaces.lock().unwrap_or_else(PoisonError::into_inner).clone();
            for core in namespaces {
                if let Err(e) = core.sweep_expired(shared, now) {
                    tracing::warn!(dir = %shared.dir.display(), namespace = %core.name, cause = %e,
                        "sweeping expired state failed");
                }
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
    partition: PartitionHandle,
    /// Orders [`Namespace::apply`] with the sweep's read-check-delete, so a
    /// sweep never deletes an entry that was just rewritten.
    writer: Mutex<()>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("dir", &self.store.shared.dir)
            .field("name", &self.core.name)
            .finish_non_exhaustive()
    }
}

const EXPIRY_BYTES: usize = 8;

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
        self.core.apply(&self.store.shared, ops)
    }

    /// Every entry still live at `now`, in key order, for a service to start
    /// from; expired ones are deleted on the way.
    ///
    /// # Errors
    /// A storage error, or [`EmbeddedError::Damaged`].
    pub fn load_live(&self, now: UnixMillis) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (store, core) = (&*self.store.shared, &*self.core);
        let mut live = Vec::new();
        let mut expired = Vec::new();
        for item in core.partition.iter() {
            let (key, stored) = item.map_err(|e| store.store_err(e))?;
            let (expires_at, value) = core.decode(store, &stored)?;
            if expires_at > now {
                live.push((key.to_vec(), value.to_vec()));
            } else {
                expired.push(key.to_vec());
            }
        }
        core.remove_if_expired(store, expired, now)?;
        Ok(live)
    }

    /// Deletes the entries expired at `now`; returns how many. The background
    /// thread calls this every [`Options::sweep_interval`].
    ///
    /// # Errors
    /// A storage error, or [`EmbeddedError::Damaged`].
    pub fn sweep_expired(&self, now: UnixMillis) -> Result<usize> {
        self.core.sweep_expired(&self.store.shared, now)
    }
}

impl NamespaceCore {
    fn apply(&self, store: &Shared, ops: &[Op]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        // One batch has one sequence number, so two writes of a key in it would
        // not be ordered: keep only the last write of each key.
        let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            last.insert(op.key(), i);
        }
        let _writer = self.lock_writer();
        // `batch()` carries PersistMode::Buffer: commit flushes the journal to the OS.
        let mut batch = store.keyspace.batch();
        for (i, op) in ops.iter().enumerate() {
            if last.get(op.key()) != Some(&i) {
                continue;
            }
            match op {
                Op::Put { key, value, expires_at } => {
                    let mut stored = Vec::with_capacity(EXPIRY_BYTES + value.len());
                    stored.extend_from_slice(&expires_at.to_be_bytes());
                    stored.extend_from_slice(value);
                    batch.insert(&self.partition, key.as_slice(), stored);
                }
                Op::Remove { key } => batch.remove(&self.partition, key.as_slice()),
            }
        }
        batch.commit().map_err(|e| store.store_err(e))
    }

    fn sweep_expired(&self, store: &Shared, now: UnixMillis) -> Result<usize> {
        let mut expired = Vec::new();
        for item in self.partition.iter() {
            let (key, stored) = item.map_err(|e| store.store_err(e))?;
            if self.decode(store, &stored)?.0 <= now {
                expired.push(key.to_vec());
            }
        }
        self.remove_if_expired(store, expired, now)
    }

    /// Removes those of `keys` that are still expired, checked under the
    /// writer lock: one may have been rewritten since it was read.
    fn remove_if_expired(&self, store: &Shared, keys: Vec<Vec<u8>>, now: UnixMillis) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        let _writer = self.lock_writer();
        let mut batch = store.keyspace.batch();
        for key in keys {
            let current = self.partition.get(&key).map_err(|e| store.store_err(e))?;
            if let Some(stored) = current
                && self.decode(store, &stored)?.0 <= now
            {
                batch.remove(&self.partition, key);
            }
        }
        let removed = batch.len();
        if removed == 0 {
            return Ok(0);
        }
        batch.commit().map_err(|e| store.store_err(e))?;
        Ok(removed)
    }

    fn decode<'a>(&self, store: &Shared, stored: &'a [u8]) -> Result<(UnixMillis, &'a [u8])> {
        let damaged = || EmbeddedError::Damaged { dir: store.dir.clone(), namespace: self.name.clone() };
        let (expiry, value) = stored.split_first_chunk::<EXPIRY_BYTES>().ok_or_else(damaged)?;
        Ok((UnixMillis::from_be_bytes(*expiry), value))
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        // The guard protects no data, only order: a poisoned one is as good.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
