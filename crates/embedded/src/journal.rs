//! One namespace's journal: numbered segment files of checksummed records,
//! appended to, and a snapshot that replaces the segments it covers.
//!
//! # Files, in `<state dir>/journal/<namespace>/`
//! - `<n>.log`: segment `n`, a sequence of records; only the highest is
//!   appended to.
//! - `<n>.snap`: every entry live when segments up to `n` were compacted, as
//!   puts. Segments up to `n` are then deleted; a crash between the rename
//!   and the deletion leaves them behind, and opening deletes them.
//!
//! # Records
//! `len: u32 LE | crc32(payload): u32 LE | payload`, where the payload is one
//! batch of ops: `1 | key len: u32 | key | expiry: u64 | value len: u32 |
//! value` for a put, `2 | key len: u32 | key` for a removal. One batch is one
//! record, written with one `write`, so a batch is applied whole or not at
//! all: a record cut short by a machine crash (at the end of a segment, what
//! was written after its last fsync, at most about a second) fails its length
//! or checksum and is cut off when the journal is opened. A bad record with
//! others after it in its file is damage, reported, never skipped.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use breakwater_signal::UnixMillis;

use crate::Op;

/// A record longer than this is damage (a torn length), not a batch.
const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;
/// Ops per snapshot record, so a snapshot is read and written in pieces.
const SNAPSHOT_OPS_PER_RECORD: usize = 4096;
const PUT: u8 = 1;
const REMOVE: u8 = 2;
const HEADER_BYTES: usize = 8;

/// Only the gateway's user may read its state.
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Entries by key: expiry and value.
pub(crate) type Entries = BTreeMap<Vec<u8>, (UnixMillis, Vec<u8>)>;

/// Why a journal cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JournalError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{file}: record at byte {offset} is damaged ({why})")]
    Damaged { file: PathBuf, offset: u64, why: &'static str },
    /// An earlier fsync failed: what was written since may not be on disk,
    /// so nothing more is accepted until the process restarts.
    #[error("an earlier fsync of {file} failed; restart to recover from the journal")]
    Failed { file: PathBuf },
}

pub(crate) struct Journal {
    dir: PathBuf,
    active: Mutex<Active>,
    /// One compaction at a time.
    compacting: Mutex<()>,
}

/// The segment appended to.
struct Active {
    number: u64,
    file: Arc<File>,
    /// Bytes appended to segments since the last snapshot.
    unsnapshotted: u64,
    /// Set when an fsync failed (see [`JournalError::Failed`]).
    failed: bool,
}

impl Journal {
    /// Opens the journal in `dir`, creating it: deletes what a compaction cut
    /// short left behind and cuts off a torn last record.
    pub(crate) fn open(dir: PathBuf) -> Result<Self, JournalError> {
        std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(&dir)?;
        let files = Files::list(&dir)?;
        for stale in &files.leftovers {
            std::fs::remove_file(stale)?;
        }
        // A crash can leave the newest segment's last record unfinished, and the one before
        // it too when it came during a compaction (see `compact`).
        for &n in &files.segments {
            cut_torn_tail(&segment_path(&dir, n))?;
        }
        let (number, file, unsnapshotted) = match files.segments.last() {
            Some(&last) => {
                let path = segment_path(&dir, last);
                let file = OpenOptions::new().append(true).open(&path)?;
                let mut bytes = 0;
                for &n in &files.segments {
                    bytes += std::fs::metadata(segment_path(&dir, n))?.len();
                }
                (last, file, bytes)
            }
            None => {
                let number = files.snapshot.map_or(1, |s| s + 1);
                (number, create_segment(&dir, number)?, 0)
            }
        };
        let active = Active { number, file: Arc::new(file), unsnapshotted, failed: false };
        Ok(Self { dir, active: Mutex::new(active), compacting: Mutex::new(()) })
    }

    /// Appends `ops` as one record and hands it to the OS.
    pub(crate) fn append(&self, ops: &[Op]) -> Result<(), JournalError> {
        let record = encode_record(ops);
        let mut active = self.lock_active();
        if active.failed {
            return Err(JournalError::Failed { file: segment_path(&self.dir, active.number) });
        }
        (&*active.file).write_all(&record)?;
        active.unsnapshotted += record.len() as u64;
        Ok(())
    }

    /// Fsyncs the segment appended to; after a failure every append fails.
    pub(crate) fn sync(&self) -> Result<(), JournalError> {
        let file = self.lock_active().file.clone();
        // The caller reports it (the background thread logs it once per failure).
        if let Err(e) = file.sync_data() {
            self.lock_active().failed = true;
            return Err(e.into());
        }
        Ok(())
    }

    /// Bytes appended since the last snapshot.
    pub(crate) fn unsnapshotted_bytes(&self) -> u64 {
        self.lock_active().unsnapshotted
    }

    /// Every entry, as the journal has it now (expired ones included).
    pub(crate) fn replay(&self) -> Result<Entries, JournalError> {
        // A compaction deletes the files it replaced.
        let _no_compaction = self.compacting.lock().unwrap_or_else(PoisonError::into_inner);
        let files = Files::list(&self.dir)?;
        // The last segment may be being appended to: a record not yet whole there is one
        // not yet written.
        self.replay_files(&files, u64::MAX, Tail::MayBeCut)
    }

    /// The snapshot's entries with those of segments up to `last_segment` applied; `tail`
    /// for the newest of those segments, the others must be whole.
    fn replay_files(&self, files: &Files, last_segment: u64, tail: Tail) -> Result<Entries, JournalError> {
        let mut entries = Entries::new();
        if let Some(snapshot) = files.snapshot {
            replay_file(&snapshot_path(&self.dir, snapshot), &mut entries, Tail::MustBeWhole)?;
        }
        let segments: Vec<u64> = files.segments.iter().copied().filter(|&n| n <= last_segment).collect();
        for (i, &n) in segments.iter().enumerate() {
            let tail = if i + 1 == segments.len() { tail } else { Tail::MustBeWhole };
            replay_file(&segment_path(&self.dir, n), &mut entries, tail)?;
        }
        Ok(entries)
    }

    /// Replaces the segments written so far with a snapshot of the entries
    /// live at `now`; returns how many expired ones it dropped. Appends go on
    /// meanwhile, to a new segment.
    pub(crate) fn compact(&self, now: UnixMillis) -> Result<usize, JournalError> {
        let _one = self.compacting.lock().unwrap_or_else(PoisonError::into_inner);
        // Only compactions change the segment number, so the next one can be made before
        // appends move to it: they wait only for the switch, not for the file system.
        let covered = {
            let active = self.lock_active();
            if active.failed {
                return Err(JournalError::Failed { file: segment_path(&self.dir, active.number) });
            }
            active.number
        };
        let next = create_segment(&self.dir, covered + 1)?;
        sync_dir(&self.dir)?;
        let old = {
            let mut active = self.lock_active();
            let failed = active.failed;
            std::mem::replace(
                &mut *active,
                Active { number: covered + 1, file: Arc::new(next), unsnapshotted: 0, failed },
            )
        };
        // Its last second, as the background fsync would have made it durable. A crash
        // before that cuts its tail at the next start, as for the newest segment.
        old.file.sync_data()?;
        let files = Files::list(&self.dir)?;
        let mut entries = self.replay_files(&files, covered, Tail::MustBeWhole)?;
        let before = entries.len();
        entries.retain(|_, (expires_at, _)| *expires_at > now);
        let expired = before - entries.len();
        write_snapshot(&self.dir, covered, entries)?;
        for old in files
            .snapshot
            .iter()
            .map(|&s| snapshot_path(&self.dir, s))
            .chain(files.segments.iter().filter(|&&n| n <= covered).map(|&n| segment_path(&self.dir, n)))
        {
            std::fs::remove_file(old)?;
        }
        Ok(expired)
    }

    fn lock_active(&self) -> MutexGuard<'_, Active> {
        // Each change of `Active` is whole by the time a panic could happen.
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The snapshot and segments in a journal directory.
struct Files {
    /// The newest snapshot.
    snapshot: Option<u64>,
    /// Segments after it, in order.
    segments: Vec<u64>,
    /// Older snapshots, segments it covers, and temporary files.
    leftovers: Vec<PathBuf>,
}

impl Files {
    fn list(dir: &Path) -> std::io::Result<Self> {
        let (mut snapshots, mut segments, mut leftovers) = (Vec::new(), Vec::new(), Vec::new());
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if let Some(n) = name.strip_suffix(".log").and_then(|n| n.parse::<u64>().ok()) {
                segments.push(n);
            } else if let Some(n) = name.strip_suffix(".snap").and_then(|n| n.parse::<u64>().ok()) {
                snapshots.push(n);
            } else if name.ends_with(".tmp") {
                leftovers.push(path);
            }
        }
        snapshots.sort_unstable();
        segments.sort_unstable();
        let snapshot = snapshots.pop();
        leftovers.extend(snapshots.into_iter().map(|s| snapshot_path(dir, s)));
        if let Some(s) = snapshot {
            leftovers.extend(segments.iter().filter(|&&n| n <= s).map(|&n| segment_path(dir, n)));
            segments.retain(|&n| n > s);
        }
        Ok(Self { snapshot, segments, leftovers })
    }
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.log"))
}

fn snapshot_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.snap"))
}

fn create_segment(dir: &Path, n: u64) -> std::io::Result<File> {
    OpenOptions::new().append(true).create_new(true).mode(FILE_MODE).open(segment_path(dir, n))
}

/// Makes a file created or renamed in `dir` survive a machine crash.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `entries` as the snapshot covering segments up to `covered`: to a
/// temporary file, fsynced, then renamed, so a snapshot is whole or absent.
fn write_snapshot(dir: &Path, covered: u64, entries: Entries) -> Result<(), JournalError> {
    let tmp = dir.join(format!("{covered:020}.snap.tmp"));
    let file = OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(&tmp)?;
    let mut out = BufWriter::new(file);
    let mut puts: Vec<Op> = Vec::with_capacity(SNAPSHOT_OPS_PER_RECORD);
    for (key, (expires_at, value)) in entries {
        puts.push(Op::Put { key, value, expires_at });
        if puts.len() == SNAPSHOT_OPS_PER_RECORD {
            out.write_all(&encode_record(&puts))?;
            puts.clear();
        }
    }
    if !puts.is_empty() {
        out.write_all(&encode_record(&puts))?;
    }
    let file = out.into_inner().map_err(std::io::IntoInnerError::into_error)?;
    file.sync_all()?;
    std::fs::rename(&tmp, snapshot_path(dir, covered))?;
    sync_dir(dir)?;
    Ok(())
}

pub(crate) fn encode_record(ops: &[Op]) -> Vec<u8> {
    let payload_len: usize = ops
        .iter()
        .map(|op| match op {
            Op::Put { key, value, .. } => 1 + 4 + key.len() + 8 + 4 + value.len(),
            Op::Remove { key } => 1 + 4 + key.len(),
        })
        .sum();
    let mut record = Vec::with_capacity(HEADER_BYTES + payload_len);
    record.extend_from_slice(&[0; HEADER_BYTES]);
    for op in ops {
        match op {
            Op::Put { key, value, expires_at } => {
                record.push(PUT);
                put_bytes(&mut record, key);
                record.extend_from_slice(&expires_at.to_le_bytes());
                put_bytes(&mut record, value);
            }
            Op::Remove { key } => {
                record.push(REMOVE);
                put_bytes(&mut record, key);
            }
        }
    }
    let crc = crc32fast::hash(&record[HEADER_BYTES..]);
    // Keys and values are a few dozen bytes; a batch is far below 4 GiB.
    let len = u32::try_from(record.len() - HEADER_BYTES).unwrap_or(u32::MAX);
    record[..4].copy_from_slice(&len.to_le_bytes());
    record[4..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    record
}

fn put_bytes(record: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    record.extend_from_slice(&len.to_le_bytes());
    record.extend_from_slice(bytes);
}

/// Whether a file may end in a record cut short.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    MustBeWhole,
    MayBeCut,
}

/// Where a file's whole records end, and why reading stopped there.
struct ReadEnd {
    whole_bytes: u64,
    /// The record after the whole ones, when there is one, cannot be read.
    bad: Option<BadRecord>,
}

struct BadRecord {
    why: &'static str,
    /// Nothing follows it: what a crash while appending it leaves behind.
    last: bool,
}

/// Calls `on_payload` with each whole record's payload of the file at `path`.
fn read_records(
    path: &Path,
    mut on_payload: impl FnMut(&[u8]) -> Result<(), &'static str>,
) -> Result<ReadEnd, JournalError> {
    let file = File::open(path)?;
    let file_bytes = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut offset = 0_u64;
    let mut payload = Vec::new();
    let end = |offset, why, last| Ok(ReadEnd { whole_bytes: offset, bad: Some(BadRecord { why, last }) });
    loop {
        let mut header = [0_u8; HEADER_BYTES];
        match read_full(&mut reader, &mut header)? {
            0 => return Ok(ReadEnd { whole_bytes: offset, bad: None }),
            n if n < HEADER_BYTES => return end(offset, "cut-off header", true),
            _ => {}
        }
        let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        let record_end = offset + (HEADER_BYTES + len) as u64;
        if len > MAX_RECORD_BYTES {
            return end(offset, "impossible length", false);
        }
        payload.resize(len, 0);
        if read_full(&mut reader, &mut payload)? < len {
            return end(offset, "cut-off record", true);
        }
        if crc32fast::hash(&payload) != crc {
            return end(offset, "checksum mismatch", record_end >= file_bytes);
        }
        if let Err(why) = on_payload(&payload) {
            return Err(JournalError::Damaged { file: path.to_owned(), offset, why });
        }
        offset = record_end;
    }
}

/// Reads until `buf` is full or the file ends; how many bytes it read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Applies the records of the file at `path` to `entries`, in order.
fn replay_file(path: &Path, entries: &mut Entries, tail: Tail) -> Result<(), JournalError> {
    let end = read_records(path, |payload| apply_payload(payload, entries))?;
    match end.bad {
        None => Ok(()),
        Some(BadRecord { last: true, .. }) if tail == Tail::MayBeCut => Ok(()),
        Some(BadRecord { why, .. }) => {
            Err(JournalError::Damaged { file: path.to_owned(), offset: end.whole_bytes, why })
        }
    }
}

/// Cuts off a record a machine crash left unfinished at the end of the
/// segment at `path`, so appends continue after the last whole one. A bad
/// record with others after it is damage, not a crash.
fn cut_torn_tail(path: &Path) -> Result<(), JournalError> {
    let end = read_records(path, |payload| apply_payload(payload, &mut Entries::new()))?;
    match end.bad {
        None => Ok(()),
        Some(BadRecord { why, last: true }) => {
            tracing::warn!(
                file = %path.display(),
                at_byte = end.whole_bytes,
                reason = why,
                "the journal ends in an unfinished record (a crash while writing it); it is cut off"
            );
            let file = OpenOptions::new().write(true).open(path)?;
            file.set_len(end.whole_bytes)?;
            file.sync_all()?;
            Ok(())
        }
        Some(BadRecord { why, last: false }) => {
            Err(JournalError::Damaged { file: path.to_owned(), offset: end.whole_bytes, why })
        }
    }
}

fn apply_payload(mut payload: &[u8], entries: &mut Entries) -> Result<(), &'static str> {
    while let Some((&tag, rest)) = payload.split_first() {
        payload = rest;
        let key = take_bytes(&mut payload)?;
        match tag {
            PUT => {
                let (expiry, rest) = payload.split_first_chunk::<8>().ok_or("a put without its expiry")?;
                payload = rest;
                let value = take_bytes(&mut payload)?;
                entries.insert(key.to_vec(), (UnixMillis::from_le_bytes(*expiry), value.to_vec()));
            }
            REMOVE => {
                entries.remove(key);
            }
            _ => return Err("unknown op"),
        }
    }
    Ok(())
}

fn take_bytes<'a>(payload: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
    let (len, rest) = payload.split_first_chunk::<4>().ok_or("a length cut short")?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err("bytes cut short");
    }
    let (bytes, rest) = rest.split_at(len);
    *payload = rest;
    Ok(bytes)
}
