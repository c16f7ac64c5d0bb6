use std::time::Duration;

use breakwater_signal::ManualClock;

use super::*;

const T0: UnixMillis = 1_000_000;

fn open(dir: &Path, clock: &ManualClock) -> EmbeddedStore {
    EmbeddedStore::open(dir, Arc::new(clock.clone())).unwrap()
}

fn put(key: &str, value: &str, expires_at: UnixMillis) -> Op {
    Op::Put { key: key.into(), value: value.into(), expires_at }
}

fn remove(key: &str) -> Op {
    Op::Remove { key: key.into() }
}

fn live(ns: &Namespace, now: UnixMillis) -> Vec<(String, String)> {
    ns.load_live(now)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn applied_batches_are_read_back_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let ns = open(dir.path(), &clock).namespace("dedup").unwrap();
    ns.apply(&[put("b", "2", T0 + 10), put("a", "1", T0 + 10), put("c", "3", T0 + 10)]).unwrap();
    ns.apply(&[remove("c"), put("a", "1bis", T0 + 10)]).unwrap();
    assert_eq!(live(&ns, T0), pairs(&[("a", "1bis"), ("b", "2")]));
}

#[test]
fn the_last_op_of_a_key_in_one_batch_wins() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let ns = open(dir.path(), &clock).namespace("dedup").unwrap();
    ns.apply(&[put("k", "first", T0 + 10), put("k", "second", T0 + 10), put("gone", "x", T0 + 10), remove("gone")])
        .unwrap();
    assert_eq!(live(&ns, T0), pairs(&[("k", "second")]));
    ns.apply(&[remove("k"), put("k", "again", T0 + 10)]).unwrap();
    assert_eq!(live(&ns, T0), pairs(&[("k", "again")]));
}

#[test]
fn expired_entries_are_skipped_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let ns = open(dir.path(), &clock).namespace("storm").unwrap();
    ns.apply(&[put("short", "s", T0 + 5), put("long", "l", T0 + 50)]).unwrap();
    assert_eq!(live(&ns, T0 + 4), pairs(&[("long", "l"), ("short", "s")]));
    // Expiry is exclusive: at its expiry an entry is gone, like a Redis TTL.
    assert_eq!(live(&ns, T0 + 5), pairs(&[("long", "l")]));
    // load_live deleted it: it does not come back at an earlier time.
    assert_eq!(live(&ns, T0), pairs(&[("long", "l")]));
    assert_eq!(ns.sweep_expired(T0 + 49).unwrap(), 0);
    assert_eq!(ns.sweep_expired(T0 + 50).unwrap(), 1);
    assert_eq!(live(&ns, T0), Vec::new());
}

#[test]
fn the_sweep_spares_an_entry_rewritten_with_a_later_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock);
    let ns = store.namespace("dedup").unwrap();
    ns.apply(&[put("k", "old", T0 + 5)]).unwrap();
    ns.apply(&[put("k", "new", T0 + 500)]).unwrap();
    assert_eq!(ns.sweep_expired(T0 + 10).unwrap(), 0);
    assert_eq!(live(&ns, T0 + 10), pairs(&[("k", "new")]));
}

#[test]
fn namespaces_are_apart_and_state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    {
        let store = open(dir.path(), &clock);
        store.namespace("dedup").unwrap().apply(&[put("k", "dedup's", T0 + 100)]).unwrap();
        store.namespace("storm").unwrap().apply(&[put("k", "storm's", T0 + 100)]).unwrap();
    }
    let store = open(dir.path(), &clock);
    assert_eq!(live(&store.namespace("dedup").unwrap(), T0), pairs(&[("k", "dedup's")]));
    assert_eq!(live(&store.namespace("storm").unwrap(), T0), pairs(&[("k", "storm's")]));
    assert_eq!(live(&store.namespace("other").unwrap(), T0), Vec::new());
}

#[test]
fn a_second_opener_of_a_directory_is_refused_with_the_directory_named() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let first = open(dir.path(), &clock);
    let ns = first.namespace("dedup").unwrap();
    let err = EmbeddedStore::open(dir.path(), Arc::new(clock.clone())).unwrap_err();
    assert!(matches!(err, EmbeddedError::Locked { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&dir.path().display().to_string()), "{message}");
    assert!(message.contains("in use by another breakwater process"), "{message}");
    // The lock lives as long as any handle: a namespace keeps it.
    drop(first);
    assert!(matches!(EmbeddedStore::open(dir.path(), Arc::new(clock.clone())), Err(EmbeddedError::Locked { .. })));
    drop(ns);
    open(dir.path(), &clock);
}

#[test]
fn bad_namespace_names_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &ManualClock::new(T0));
    for name in ["", "Dedup", "a/b", "..", "a b"] {
        assert!(matches!(store.namespace(name), Err(EmbeddedError::BadNamespace(_))), "{name:?}");
    }
}

#[test]
fn the_background_thread_sweeps_expired_entries() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let options = Options {
        fsync_interval: Duration::from_millis(10),
        sweep_interval: Duration::from_millis(10),
        ..Options::default()
    };
    let store = EmbeddedStore::open_with(dir.path(), options, Arc::new(clock.clone())).unwrap();
    let ns = store.namespace("dedup").unwrap();
    ns.apply(&[put("k", "v", T0 + 5)]).unwrap();
    clock.advance_ms(10);
    let deadline = Instant::now() + Duration::from_secs(10);
    // The sweep deleted it when even an earlier `now` no longer sees it.
    while !live(&ns, T0).is_empty() {
        assert!(Instant::now() < deadline, "the entry was not swept");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The segment files of `namespace`, oldest first.
fn segments(dir: &Path, namespace: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("journal").join(namespace))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_batch_cut_short_by_a_crash_is_dropped_whole_and_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    {
        let ns = open(dir.path(), &clock).namespace("dedup").unwrap();
        ns.apply(&[put("a", "1", T0 + 100)]).unwrap();
        ns.apply(&[put("b", "2", T0 + 100), put("c", "3", T0 + 100)]).unwrap();
    }
    // A machine crash while the second batch was written: its last bytes never reached the disk.
    let segment = segments(dir.path(), "dedup").pop().unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    OpenOptions::new().write(true).open(&segment).unwrap().set_len(len - 3).unwrap();
    let store = open(dir.path(), &clock);
    let ns = store.namespace("dedup").unwrap();
    assert_eq!(live(&ns, T0), pairs(&[("a", "1")]), "the cut batch is dropped whole, never in part");
    ns.apply(&[put("d", "4", T0 + 100)]).unwrap();
    drop((ns, store));
    let ns = open(dir.path(), &clock).namespace("dedup").unwrap();
    assert_eq!(live(&ns, T0), pairs(&[("a", "1"), ("d", "4")]));
}

#[test]
fn a_damaged_record_with_records_after_it_stops_the_start_naming_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    {
        let ns = open(dir.path(), &clock).namespace("storm").unwrap();
        ns.apply(&[put("a", "first", T0 + 100)]).unwrap();
        ns.apply(&[put("b", "second", T0 + 100)]).unwrap();
    }
    let segment = segments(dir.path(), "storm").pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    // A byte of the first record's value ("first"), not its length.
    let at = bytes.windows(5).position(|w| w == b"first").unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(&segment, bytes).unwrap();
    let err = open(dir.path(), &clock).namespace("storm").unwrap_err();
    assert!(matches!(err, EmbeddedError::Damaged { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("storm") && message.contains("checksum"), "{message}");
}

#[test]
fn a_compaction_keeps_the_live_entries_drops_the_rest_and_shrinks_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock);
    let ns = store.namespace("dedup").unwrap();
    for round in 0..200 {
        ns.apply(&[put("kept", &format!("v{round}"), T0 + 1_000), put(&format!("short{round}"), "x", T0 + 5)]).unwrap();
    }
    ns.apply(&[put("removed", "x", T0 + 1_000)]).unwrap();
    ns.apply(&[remove("removed")]).unwrap();
    let journal_bytes = |dir: &Path| -> u64 {
        std::fs::read_dir(dir.join("journal").join("dedup"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let before = journal_bytes(dir.path());
    assert_eq!(ns.sweep_expired(T0 + 10).unwrap(), 200);
    assert!(journal_bytes(dir.path()) * 20 < before, "{} of {before} bytes left", journal_bytes(dir.path()));
    assert_eq!(live(&ns, T0), pairs(&[("kept", "v199")]));
    // Appends after a compaction go on top of its snapshot, also after reopening.
    ns.apply(&[put("later", "y", T0 + 1_000)]).unwrap();
    drop((ns, store));
    let ns = open(dir.path(), &clock).namespace("dedup").unwrap();
    assert_eq!(live(&ns, T0), pairs(&[("kept", "v199"), ("later", "y")]));
    assert_eq!(segments(dir.path(), "dedup").len(), 1, "compacted segments are deleted");
}

#[test]
fn appends_during_compactions_are_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let options = Options {
        fsync_interval: Duration::from_millis(1),
        sweep_interval: Duration::from_millis(1),
        compact_after_bytes: 1,
    };
    let store = EmbeddedStore::open_with(dir.path(), options, Arc::new(clock.clone())).unwrap();
    let ns = store.namespace("storm").unwrap();
    for i in 0..2_000 {
        ns.apply(&[put(&format!("k{i:05}"), "v", T0 + 100)]).unwrap();
    }
    drop((ns, store));
    let ns = open(dir.path(), &clock).namespace("storm").unwrap();
    assert_eq!(live(&ns, T0).len(), 2_000);
}

#[test]
fn a_crash_during_a_compaction_cuts_the_unfinished_batch_of_the_older_segment_too() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    {
        let ns = open(dir.path(), &clock).namespace("dedup").unwrap();
        ns.apply(&[put("a", "1", T0 + 100)]).unwrap();
        ns.apply(&[put("b", "2", T0 + 100)]).unwrap();
    }
    // The compaction had switched to a new segment, and the crash came before the old one's
    // last batch was on disk and before the snapshot was written.
    let old = segments(dir.path(), "dedup").pop().unwrap();
    let len = std::fs::metadata(&old).unwrap().len();
    OpenOptions::new().write(true).open(&old).unwrap().set_len(len - 2).unwrap();
    let name = old.file_name().unwrap().to_str().unwrap();
    let next: u64 = name.trim_end_matches(".log").parse::<u64>().unwrap() + 1;
    std::fs::write(old.with_file_name(format!("{next:020}.log")), b"").unwrap();
    let ns = open(dir.path(), &clock).namespace("dedup").unwrap();
    ns.apply(&[put("c", "3", T0 + 100)]).unwrap();
    assert_eq!(live(&ns, T0), pairs(&[("a", "1"), ("c", "3")]));
}
