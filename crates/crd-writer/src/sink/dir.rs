//! The embedded sink: one YAML file per CR at `<dir>/<namespace>/<name>.yaml`.
//!
//! Each file holds the whole object (apiVersion, kind, metadata, spec), so `kubectl apply -f`
//! accepts it. Files are replaced atomically (temporary file, then rename). Writes to one file
//! go through one of [`LOCK_STRIPES`] async mutexes (picked by the file's path), so a
//! read-modify-write cannot interleave with another of the same CR, while different CRs are
//! written in parallel; this sink assumes it is the directory's only writer.
//!
//! CRs carry labels and annotations, so the directories it creates are 0700 and its files 0600.
//! It follows no symlink below the root: a namespace directory that is a link is refused, a CR
//! file is opened with `O_NOFOLLOW`, and a temporary file has an unpredictable name and is
//! created with `O_EXCL`, so a link planted in its place is never written through.
//!
//! A CR file that cannot be read back (not YAML of a RemediationRequest, or a link) is moved
//! aside to `<name>.yaml.corrupt-<unix ms>`, reported once and counted in
//! `breakwater_crd_sink_quarantined_total`; the caller then sees the CR as missing and creates
//! it again from what it knows (the incident's first signal and its pending counts), so a bad
//! file never blocks its counts for good.
//!
//! Before every create, and per alert while dedup is unavailable, crd-writer asks for the
//! latest CR of a fingerprint ([`RemediationSink::find_latest`]). An index of the CR names of each
//! fingerprint answers it by reading only those files: the namespace is scanned once, the
//! first time it is asked about, and `create` keeps the index current from then on.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::sync::Mutex;

use breakwater_signal::{Clock, SystemClock, UnixMillis};

use super::{
    CountUpdate, CrPhase, CreateOutcome, Created, LatestCr, RemediationSink, SinkError, UpdateOutcome,
    add_occurrences_to, change_counts, check_owned, latest_incident,
};
use crate::crd::{CrRef, RemediationRequest, RemediationRequestSpec, is_dns1123_label};

/// Default `affectedResources` cap, as `crd_writer.affected_resources_cap`.
const DEFAULT_CAP: usize = 100;

/// Write locks; a file's path picks its lock. One lock for all serialised every create of a
/// burst of new incidents behind each other's file I/O.
const LOCK_STRIPES: usize = 64;

#[derive(Debug)]
pub struct DirSink {
    root: PathBuf,
    cap: usize,
    write_locks: Vec<Mutex<()>>,
    /// Per namespace scanned so far, the CR names of each fingerprint (`spec.signalFingerprint`).
    /// A namespace is added while holding every write lock, so no create slips between its
    /// scan and its entry; a create adds its name while holding its file's lock.
    index: std::sync::Mutex<HashMap<String, HashMap<String, Vec<String>>>>,
    /// CR files read, for tests of the index.
    files_read: AtomicU64,
    /// The phase of each finished CR as last read from its file, so a repeat counted on it
    /// learns it without a read ([`RemediationSink::known_phase`]).
    finished: std::sync::Mutex<HashMap<CrRef, CrPhase>>,
}

/// Finished CRs whose phase [`DirSink`] remembers at most; past this it starts over.
const MAX_FINISHED_KNOWN: usize = 65_536;

impl DirSink {
    /// A sink writing under `root`, which is created on first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            cap: DEFAULT_CAP,
            write_locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            index: std::sync::Mutex::new(HashMap::new()),
            files_read: AtomicU64::new(0),
            finished: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Caps `affectedResources` at `cap` entries (default 100).
    #[must_use]
    pub fn with_resource_cap(mut self, cap: usize) -> Self {
        self.cap = cap;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of `target`; only DNS-1123 labels pass, so no path can leave the root.
    fn path_of(&self, target: &CrRef) -> Result<PathBuf, SinkError> {
        for part in [&target.namespace, &target.name] {
            if !is_dns1123_label(part) {
                return Err(SinkError::InvalidName(part.clone()));
            }
        }
        Ok(self.root.join(&target.namespace).join(format!("{}.yaml", target.name)))
    }

    /// CR files read so far (the index keeps this O(1) per `find_open`).
    pub fn files_read(&self) -> u64 {
        self.files_read.load(Ordering::Relaxed)
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Vec<String>>>> {
        // Each change is one insert: a panic elsewhere cannot leave the map half-changed.
        self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers `phase`, the phase of the CR `at` as read now: only finished ones are kept.
    fn note_phase(&self, at: &CrRef, phase: CrPhase) {
        // Each change is one insert, remove or clear: a poisoned map is still sound.
        let mut finished = self.finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match phase {
            phase @ CrPhase::Finished { .. } => {
                if finished.len() >= MAX_FINISHED_KNOWN && !finished.contains_key(at) {
                    finished.clear();
                }
                finished.insert(at.clone(), phase);
            }
            CrPhase::Open | CrPhase::Resolved => {
                finished.remove(at);
            }
        }
    }

    /// The write lock of the file at `path`.
    async fn lock_file(&self, path: &Path) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(path);
        let stripe = usize::try_from(hash % LOCK_STRIPES as u64).unwrap_or(0);
        self.write_locks[stripe].lock().await
    }

    /// The names of the CRs of `fingerprint` in `namespace`, scanning the namespace into the
    /// index the first time it is asked about.
    async fn names_of(&self, namespace: &str, fingerprint: &str) -> Result<Vec<String>, SinkError> {
        if let Some(by_fingerprint) = self.lock_index().get(namespace) {
            return Ok(by_fingerprint.get(fingerprint).cloned().unwrap_or_default());
        }
        // Under every write lock (taken in order, while a create takes one), so no create
        // slips between the scan and the index.
        let mut guards = Vec::with_capacity(LOCK_STRIPES);
        for lock in &self.write_locks {
            guards.push(lock.lock().await);
        }
        if let Some(by_fingerprint) = self.lock_index().get(namespace) {
            return Ok(by_fingerprint.get(fingerprint).cloned().unwrap_or_default());
        }
        let mut by_fingerprint: HashMap<String, Vec<String>> = HashMap::new();
        for rr in self.read_namespace(namespace).await? {
            if let Some(name) = rr.metadata.name {
                by_fingerprint.entry(rr.spec.signal_fingerprint).or_default().push(name);
            }
        }
        let names = by_fingerprint.get(fingerprint).cloned().unwrap_or_default();
        self.lock_index().insert(namespace.to_owned(), by_fingerprint);
        Ok(names)
    }

    async fn read(&self, path: &Path) -> Result<Option<RemediationRequest>, SinkError> {
        self.files_read.fetch_add(1, Ordering::Relaxed);
        let owned = path.to_owned();
        let text = match tokio::task::spawn_blocking(move || read_no_follow(&owned)).await {
            Ok(Ok(Some(text))) => text,
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ELOOP) => return Err(not_a_file(path)),
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(std::io::Error::other(e).into()),
        };
        serde_saphyr::from_str(&text)
            .map(Some)
            .map_err(|source| SinkError::Corrupt { path: path.display().to_string(), source: Box::new(source) })
    }

    /// Moves an unreadable CR file aside (see the module doc), so its CR can be created again.
    async fn quarantine(&self, path: &Path, cause: &SinkError) -> Result<(), SinkError> {
        let reason = if is_not_a_file(cause) { "not_a_file" } else { "corrupt" };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let aside = path.with_file_name(format!("{name}.corrupt-{}", SystemClock.now()));
        tokio::fs::rename(path, &aside).await?;
        metrics::counter!("breakwater_crd_sink_quarantined_total", "reason" => reason).increment(1);
        tracing::error!(
            path = %path.display(),
            moved_to = %aside.display(),
            cause = %cause,
            "remediation file cannot be read; moved aside, the CR is written again from its pending counts"
        );
        Ok(())
    }

    /// Every CR of `namespace`, named after its file (what [`Self::path_of`] finds again). A
    /// file that is not a RemediationRequest is skipped with a warning: one bad file must not
    /// hide the others.
    async fn read_namespace(&self, namespace: &str) -> Result<Vec<RemediationRequest>, SinkError> {
        if !is_dns1123_label(namespace) {
            return Err(SinkError::InvalidName(namespace.to_owned()));
        }
        let mut entries = match tokio::fs::read_dir(self.root.join(namespace)).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut rrs = Vec::new();
        while let Some(entry) = entries.next_entry().await? {
            let path = entry.path();
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            // Temporary files start with a dot (see `write`) and do not end in `.yaml`.
            let Some(name) = file_name.strip_suffix(".yaml").filter(|n| !n.starts_with('.')) else {
                continue;
            };
            match self.read(&path).await {
                Ok(Some(mut rr)) => {
                    rr.metadata.namespace = Some(namespace.to_owned());
                    rr.metadata.name = Some(name.to_owned());
                    rrs.push(rr);
                }
                // Renamed or removed since the listing.
                Ok(None) => {}
                Err(err) if is_unreadable(&err) => tracing::warn!(cause = %err, "skipping remediation file"),
                Err(err) => return Err(err),
            }
        }
        Ok(rrs)
    }

    /// Reads the CR under the write lock, applies `change` and writes it back if it changed;
    /// only a CR crd-writer may change for `fingerprint` ([`check_owned`]).
    async fn read_modify_write(
        &self,
        target: &CrRef,
        fingerprint: &str,
        change: impl FnOnce(&mut RemediationRequestSpec) -> bool + Send,
    ) -> Result<UpdateOutcome, SinkError> {
        let path = self.path_of(target)?;
        let _guard = self.lock_file(&path).await;
        let mut rr = match self.read(&path).await {
            Ok(Some(rr)) => rr,
            Ok(None) => return Ok(UpdateOutcome::NotFound),
            Err(err) if is_unreadable(&err) => {
                self.quarantine(&path, &err).await?;
                return Ok(UpdateOutcome::NotFound);
            }
            Err(err) => return Err(err),
        };
        check_owned(&rr, target, fingerprint)?;
        let phase = CrPhase::of(&rr);
        self.note_phase(target, phase);
        let finished = matches!(phase, CrPhase::Finished { .. });
        if !change_counts(&mut rr.spec, finished, change) {
            return Ok(UpdateOutcome::Unchanged);
        }
        bump_resource_version(&mut rr);
        self.write(&path, &rr).await?;
        Ok(UpdateOutcome::Updated)
    }

    async fn write(&self, path: &Path, rr: &RemediationRequest) -> Result<(), SinkError> {
        let yaml = serde_saphyr::to_string(rr)?;
        let (root, path) = (self.root.clone(), path.to_owned());
        tokio::task::spawn_blocking(move || write_blocking(&root, &path, yaml.as_bytes()))
            .await
            .map_err(std::io::Error::other)?
    }
}

/// A link (or another non-file) where the sink expects its own file or directory.
#[derive(Debug, thiserror::Error)]
#[error("{path} is a link or not a regular file; the directory sink does not follow it")]
struct NotAFile {
    path: String,
}

/// Carried as an I/O error: the sink's error type is shared with the gRPC face.
fn not_a_file(path: &Path) -> SinkError {
    SinkError::Io(std::io::Error::other(NotAFile { path: path.display().to_string() }))
}

fn is_not_a_file(err: &SinkError) -> bool {
    matches!(err, SinkError::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<NotAFile>()))
}

/// A CR file that cannot be read back as a CR: moved aside, never retried as is.
fn is_unreadable(err: &SinkError) -> bool {
    matches!(err, SinkError::Corrupt { .. }) || is_not_a_file(err)
}

/// Only the gateway's user may list or read CRs: they carry labels and annotations.
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Writes `path` (under `root`) through a fresh temporary file and a rename.
fn write_blocking(root: &Path, path: &Path, yaml: &[u8]) -> Result<(), SinkError> {
    let dir = path.parent().unwrap_or(root);
    // Creates the root too, 0700, when it does not exist yet.
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    if dir != root && !std::fs::symlink_metadata(dir)?.is_dir() {
        // A link planted as a namespace directory would lead writes out of the root.
        return Err(not_a_file(dir));
    }
    // Unpredictable, and O_EXCL: a link planted under this name makes the open fail
    // instead of being written through.
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(&tmp)?;
    // rename replaces a link at `path` itself, never the file it points to.
    if let Err(e) = file.write_all(yaml).and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}

/// The file's text, or `None` when it does not exist; a link fails with `ELOOP`.
fn read_no_follow(path: &Path) -> std::io::Result<Option<String>> {
    let mut file = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text)?;
    Ok(Some(text))
}

fn target_of(rr: &RemediationRequest) -> CrRef {
    CrRef {
        namespace: rr.metadata.namespace.clone().unwrap_or_default(),
        name: rr.metadata.name.clone().unwrap_or_default(),
    }
}

/// Next `metadata.resourceVersion`, so readers can tell versions apart as on a cluster.
fn bump_resource_version(rr: &mut RemediationRequest) {
    let next = rr.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
    rr.metadata.resource_version = Some(next.to_string());
}

#[async_trait]
impl RemediationSink for DirSink {
    async fn create(&self, rr: &RemediationRequest) -> Result<Created, SinkError> {
        let target = target_of(rr);
        let path = self.path_of(&target)?;
        let _guard = self.lock_file(&path).await;
        match tokio::fs::symlink_metadata(&path).await {
            Ok(meta) if meta.is_file() => {
                return Ok(Created { outcome: CreateOutcome::AlreadyExisted, namespace: target.namespace });
            }
            // A link or anything else in the CR's place is not a CR this sink wrote.
            Ok(_) => self.quarantine(&path, &not_a_file(&path)).await?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let mut rr = rr.clone();
        rr.metadata.resource_version = None;
        bump_resource_version(&mut rr);
        self.write(&path, &rr).await?;
        if let Some(by_fingerprint) = self.lock_index().get_mut(&target.namespace) {
            by_fingerprint.entry(rr.spec.signal_fingerprint.clone()).or_default().push(target.name.clone());
        }
        Ok(Created { outcome: CreateOutcome::Created, namespace: target.namespace })
    }

    async fn get(&self, target: &CrRef) -> Result<Option<RemediationRequest>, SinkError> {
        let path = self.path_of(target)?;
        self.read(&path).await
    }

    async fn update_counts(&self, target: &CrRef, update: &CountUpdate) -> Result<UpdateOutcome, SinkError> {
        self.read_modify_write(target, &update.fingerprint, |spec| update.apply_to(spec, self.cap)).await
    }

    fn known_phase(&self, at: &CrRef, _fingerprint: &str) -> Option<CrPhase> {
        self.finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(at).copied()
    }

    async fn find_latest(&self, namespace: &str, fingerprint: &str) -> Result<Option<LatestCr>, SinkError> {
        if !is_dns1123_label(namespace) {
            return Err(SinkError::InvalidName(namespace.to_owned()));
        }
        let mut candidates = Vec::new();
        for name in self.names_of(namespace, fingerprint).await? {
            let target = CrRef { namespace: namespace.to_owned(), name };
            // Gone or unreadable since it was indexed: not this incident's CR. Its phase is
            // read from the file, so a person closes an incident by editing it.
            if let Ok(Some(mut rr)) = self.read(&self.path_of(&target)?).await {
                self.note_phase(&target, CrPhase::of(&rr));
                rr.metadata.namespace = Some(target.namespace);
                rr.metadata.name = Some(target.name);
                candidates.push(rr);
            }
        }
        Ok(latest_incident(candidates, fingerprint))
    }

    async fn add_occurrences(&self, target: &CrRef, n: u64, last_seen: UnixMillis) -> Result<UpdateOutcome, SinkError> {
        self.read_modify_write(target, "", |spec| add_occurrences_to(spec, n, last_seen)).await
    }
}

#[cfg(test)]
mod tests;
