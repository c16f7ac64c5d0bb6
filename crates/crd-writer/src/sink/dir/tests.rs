use std::collections::HashMap;

use breakwater_proto::v1 as pb;

use super::*;
use crate::crd::{StormType, StormWrite, Write, WriteKind, build, time};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn write(namespace: &str, name: &str, storm: bool) -> Write {
    Write {
        shared: Default::default(),
        kind: if storm { WriteKind::StormCreate } else { WriteKind::Create },
        target: CrRef { namespace: namespace.to_owned(), name: name.to_owned() },
        signal: pb::Signal {
            fingerprint: "0".repeat(64),
            alert_name: "KubePodCrashLooping".to_owned(),
            severity: pb::Severity::Warning.into(),
            namespace: namespace.to_owned(),
            resource: Some(pb::Resource {
                kind: "Pod".to_owned(),
                name: "p-1".to_owned(),
                namespace: namespace.to_owned(),
            }),
            labels: HashMap::from([("environment".to_owned(), "staging".to_owned())]),
            annotations: HashMap::from([("big".to_owned(), "x".repeat(300_000))]),
            received_time_unix_ms: 1_700_000_000_000,
            source_type: "prometheus-alert".to_owned(),
            source: "prometheus".to_owned(),
            original_payload: b"{\"status\":\"firing\"}\n".to_vec(),
            ..pb::Signal::default()
        },
        first_seen: 1_700_000_000_000,
        last_seen: 1_700_000_000_000,
        occurrence_count: 1,
        identity_only: false,
        storm: storm.then_some(StormWrite {
            storm_type: Some(StormType::Rate),
            window_start: 1_700_000_000_000,
            window_secs: 60,
            alert_count: 11,
            resource_listed: true,
            resources_omitted: 0,
        }),
    }
}

fn target(namespace: &str, name: &str) -> CrRef {
    CrRef { namespace: namespace.to_owned(), name: name.to_owned() }
}

#[tokio::test]
async fn create_then_already_existed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sink = DirSink::new(dir.path());
    let rr = build(&write("payments", "rr-1", false), 1_700_000_000_500, "kubernaut-system");

    let first = sink.create(&rr).await?;
    assert_eq!(first, Created { outcome: CreateOutcome::Created, namespace: "payments".to_owned() });
    assert!(dir.path().join("payments/rr-1.yaml").is_file());

    let mut changed = rr.clone();
    changed.spec.deduplication.occurrence_count = 99;
    let second = sink.create(&changed).await?;
    assert_eq!(second.outcome, CreateOutcome::AlreadyExisted);
    let stored = sink.get(&target("payments", "rr-1")).await?.ok_or("missing")?;
    assert_eq!(stored.spec.deduplication.occurrence_count, 1, "a second create does not overwrite");
    Ok(())
}

#[tokio::test]
async fn yaml_round_trips_to_the_same_cr() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sink = DirSink::new(dir.path());
    let rr = build(&write("payments", "storm-1", true), 1_700_000_000_500, "kubernaut-system");
    sink.create(&rr).await?;

    let text = std::fs::read_to_string(dir.path().join("payments/storm-1.yaml"))?;
    assert!(
        text.starts_with("apiVersion: remediation.kubernaut.io/v1alpha1\nkind: RemediationRequest\n"),
        "{text:.200}"
    );
    let parsed: RemediationRequest = serde_saphyr::from_str(&text)?;
    let mut expected = rr.clone();
    expected.metadata.resource_version = Some("1".to_owned());
    assert_eq!(parsed, expected);
    assert_eq!(sink.get(&target("payments", "storm-1")).await?, Some(expected));
    assert_eq!(sink.get(&target("payments", "nope")).await?, None);
    Ok(())
}

#[tokio::test]
async fn updates_apply_max_semantics() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sink = DirSink::new(dir.path()).with_resource_cap(2);
    let at = target("payments", "storm-1");
    sink.create(&build(&write("payments", "storm-1", true), 1_700_000_000_500, "kubernaut-system")).await?;

    let update = CountUpdate {
        occurrence_count: 4,
        window_start: 0,
        last_seen: 1_700_000_009_000,
        storm_alert_count: 20,
        affected_resources: vec!["payments:Pod:p-2".to_owned(), "payments:Pod:p-3".to_owned()],
        affected_resources_omitted: 0,
        resolved_at: 0,
        fingerprint: String::new(),
    };
    assert_eq!(sink.update_counts(&at, &update).await?, UpdateOutcome::Updated);
    let stale = CountUpdate { occurrence_count: 2, storm_alert_count: 12, ..CountUpdate::default() };
    assert_eq!(sink.update_counts(&at, &stale).await?, UpdateOutcome::Unchanged);

    let rr = sink.get(&at).await?.ok_or("missing")?;
    assert_eq!(rr.spec.deduplication.occurrence_count, 4);
    assert_eq!(rr.spec.deduplication.last_seen, time(1_700_000_009_000));
    assert_eq!(rr.spec.storm_alert_count, Some(20));
    assert_eq!(rr.spec.affected_resources, vec!["payments:Pod:p-1".to_owned(), "payments:Pod:p-2".to_owned()]);
    assert_eq!(rr.spec.affected_resources_omitted, Some(1));
    assert_eq!(rr.metadata.resource_version.as_deref(), Some("2"));

    let missing = sink.update_counts(&target("payments", "rr-x"), &update).await?;
    assert_eq!(missing, UpdateOutcome::NotFound);
    Ok(())
}

#[tokio::test]
async fn concurrent_updates_keep_the_max() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sink = std::sync::Arc::new(DirSink::new(dir.path()));
    let at = target("payments", "rr-1");
    sink.create(&build(&write("payments", "rr-1", false), 1_700_000_000_500, "kubernaut-system")).await?;
    let tasks: Vec<_> = (1..=20u64)
        .map(|n| {
            let sink = std::sync::Arc::clone(&sink);
            let at = at.clone();
            tokio::spawn(async move {
                let update = CountUpdate { occurrence_count: n, ..CountUpdate::default() };
                sink.update_counts(&at, &update).await
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let rr = sink.get(&at).await?.ok_or("missing")?;
    assert_eq!(rr.spec.deduplication.occurrence_count, 20);
    Ok(())
}

#[tokio::test]
async fn names_that_could_escape_are_rejected() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let sink = DirSink::new(&root);
    for (namespace, name) in
        [("..", "x"), ("ns", "../../etc/passwd"), ("ns/..", "x"), ("NS", "x"), ("", "x"), ("ns", ".hidden")]
    {
        let rr = build(&write("payments", "rr-1", false), 0, "kubernaut-system");
        let mut rr = rr;
        rr.metadata.namespace = Some(namespace.to_owned());
        rr.metadata.name = Some(name.to_owned());
        let err = sink.create(&rr).await.err().ok_or("accepted a bad name")?;
        assert!(matches!(err, SinkError::InvalidName(_)), "{namespace}/{name}: {err}");
        let at = target(namespace, name);
        assert!(matches!(sink.get(&at).await, Err(SinkError::InvalidName(_))));
        assert!(matches!(sink.update_counts(&at, &CountUpdate::default()).await, Err(SinkError::InvalidName(_))));
    }
    assert!(!root.exists(), "nothing was written");
    Ok(())
}

#[tokio::test]
async fn a_corrupt_file_is_an_error_not_a_missing_cr() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("payments"))?;
    std::fs::write(dir.path().join("payments/rr-1.yaml"), "kind: [unterminated")?;
    let sink = DirSink::new(dir.path());
    let err = sink.get(&target("payments", "rr-1")).await.err().ok_or("parsed garbage")?;
    assert!(matches!(err, SinkError::Corrupt { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn find_open_scans_the_namespace_and_skips_what_is_not_a_cr() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sink = DirSink::new(dir.path());
    let fp = "0".repeat(64);
    assert_eq!(sink.find_open("payments", &fp).await?, None, "no directory yet");

    sink.create(&build(&write("payments", "rr-1", false), 1_700_000_000_500, "kubernaut-system")).await?;
    std::fs::write(dir.path().join("payments/rr-garbage.yaml"), "kind: [unterminated")?;
    std::fs::write(dir.path().join("payments/.tmp-1-0"), "half a file")?;
    std::fs::write(dir.path().join("payments/notes.txt"), "not yaml")?;
    // A CR stored under another file name is found by its file, which is what `get` reads.
    std::fs::rename(dir.path().join("payments/rr-1.yaml"), dir.path().join("payments/rr-renamed.yaml"))?;

    // A sink indexes a namespace the first time it is asked (as after a restart).
    let sink = DirSink::new(dir.path());
    assert_eq!(sink.find_open("payments", &fp).await?, Some(target("payments", "rr-renamed")));
    assert_eq!(sink.find_open("payments", &"1".repeat(64)).await?, None);
    assert_eq!(sink.find_open("billing", &fp).await?, None);
    assert!(matches!(sink.find_open("../payments", &fp).await, Err(SinkError::InvalidName(_))));
    Ok(())
}

/// The dedup of last resort costs O(1) per alert: after one scan of the namespace, a lookup
/// reads only the files of its fingerprint, and CRs created since are found.
#[tokio::test]
async fn find_open_reads_only_the_fingerprints_files_after_one_scan() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sink = DirSink::new(dir.path());
    for i in 0..200 {
        let mut w = write("payments", &format!("rr-{i}"), false);
        w.signal.fingerprint = format!("{i:064x}");
        sink.create(&build(&w, 1_700_000_000_500, "kubernaut-system")).await?;
    }
    let fp = format!("{:064x}", 7);
    assert_eq!(sink.find_open("payments", &fp).await?, Some(target("payments", "rr-7")));
    let after_scan = sink.files_read();
    for _ in 0..100 {
        assert_eq!(sink.find_open("payments", &fp).await?, Some(target("payments", "rr-7")));
    }
    assert_eq!(sink.files_read() - after_scan, 100, "one file per lookup");
    let mut w = write("payments", "rr-new", false);
    w.signal.fingerprint = "f".repeat(64);
    sink.create(&build(&w, 1_700_000_000_600, "kubernaut-system")).await?;
    assert_eq!(sink.find_open("payments", &"f".repeat(64)).await?, Some(target("payments", "rr-new")));
    Ok(())
}

#[tokio::test]
async fn increments_add_up_under_concurrency() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sink = std::sync::Arc::new(DirSink::new(dir.path()));
    let at = target("payments", "rr-1");
    sink.create(&build(&write("payments", "rr-1", false), 1_700_000_000_500, "kubernaut-system")).await?;
    let tasks: Vec<_> = (1..=20i64)
        .map(|i| {
            let sink = std::sync::Arc::clone(&sink);
            let at = at.clone();
            tokio::spawn(async move { sink.add_occurrences(&at, 2, 1_700_000_000_000 + i * 1000).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await??, UpdateOutcome::Updated);
    }
    let rr = sink.get(&at).await?.ok_or("missing")?;
    assert_eq!(rr.spec.deduplication.occurrence_count, 41, "1 + 20 × 2");
    assert_eq!(rr.spec.deduplication.last_seen, time(1_700_000_020_000));
    assert_eq!(rr.metadata.resource_version.as_deref(), Some("21"));
    assert_eq!(sink.add_occurrences(&target("payments", "rr-x"), 1, 0).await?, UpdateOutcome::NotFound);
    Ok(())
}

/// The files under `dir` whose name starts with `prefix`.
fn named(dir: &std::path::Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with(prefix)).collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_corrupt_file_is_moved_aside_and_its_cr_written_again() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sink = DirSink::new(dir.path());
    let rr = build(&write("payments", "rr-1", false), 1_700_000_000_500, "kubernaut-system");
    sink.create(&rr).await?;
    std::fs::write(dir.path().join("payments/rr-1.yaml"), "kind: [unterminated")?;

    // The update finds no CR it can use (so the flusher creates it again), instead of failing
    // every flush for good.
    let update = CountUpdate { occurrence_count: 5, ..CountUpdate::default() };
    assert_eq!(sink.update_counts(&target("payments", "rr-1"), &update).await?, UpdateOutcome::NotFound);
    let aside = named(&dir.path().join("payments"), "rr-1.yaml.corrupt-");
    assert_eq!(aside.len(), 1, "moved aside: {aside:?}");
    assert_eq!(std::fs::read_to_string(dir.path().join("payments").join(&aside[0]))?, "kind: [unterminated");
    let created = sink.create(&rr).await?;
    assert_eq!(created.outcome, CreateOutcome::Created);
    assert_eq!(sink.update_counts(&target("payments", "rr-1"), &update).await?, UpdateOutcome::Updated);
    let rebuilt = sink.get(&target("payments", "rr-1")).await?.ok_or("missing")?;
    assert_eq!(rebuilt.spec.deduplication.occurrence_count, 5);
    Ok(())
}

#[tokio::test]
async fn the_root_is_0700_and_files_0600() -> TestResult {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("remediations");
    let sink = DirSink::new(&root);
    sink.create(&build(&write("payments", "rr-1", false), 1_700_000_000_500, "kubernaut-system")).await?;
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode(&root)?, 0o700, "root");
    assert_eq!(mode(&root.join("payments"))?, 0o700, "namespace directory");
    assert_eq!(mode(&root.join("payments/rr-1.yaml"))?, 0o600, "CR file");
    sink.add_occurrences(&target("payments", "rr-1"), 1, 1_700_000_001_000).await?;
    assert_eq!(mode(&root.join("payments/rr-1.yaml"))?, 0o600, "CR file rewritten");
    Ok(())
}

#[tokio::test]
async fn a_namespace_directory_that_is_a_link_is_not_followed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir_all(&outside)?;
    std::os::unix::fs::symlink(&outside, root.join("payments"))?;
    let sink = DirSink::new(&root);
    let rr = build(&write("payments", "rr-1", false), 1_700_000_000_500, "kubernaut-system");
    assert!(sink.create(&rr).await.is_err(), "a create through the link is refused");
    assert_eq!(std::fs::read_dir(&outside)?.count(), 0, "nothing written outside the root");
    Ok(())
}

#[tokio::test]
async fn a_cr_file_that_is_a_link_is_moved_aside_not_read_or_written_through() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let sink = DirSink::new(&root);
    let rr = build(&write("payments", "rr-1", false), 1_700_000_000_500, "kubernaut-system");
    sink.create(&rr).await?;
    // Another file, valid CR YAML, that a link in the CR's place points to.
    let victim = dir.path().join("victim.yaml");
    std::fs::copy(root.join("payments/rr-1.yaml"), &victim)?;
    let before = std::fs::read_to_string(&victim)?;
    std::fs::remove_file(root.join("payments/rr-1.yaml"))?;
    std::os::unix::fs::symlink(&victim, root.join("payments/rr-1.yaml"))?;

    assert!(sink.get(&target("payments", "rr-1")).await.is_err(), "not read through the link");
    let update = CountUpdate { occurrence_count: 9, ..CountUpdate::default() };
    assert_eq!(sink.update_counts(&target("payments", "rr-1"), &update).await?, UpdateOutcome::NotFound);
    assert_eq!(named(&root.join("payments"), "rr-1.yaml.corrupt-").len(), 1, "the link is moved aside");
    assert_eq!(sink.create(&rr).await?.outcome, CreateOutcome::Created);
    assert!(std::fs::symlink_metadata(root.join("payments/rr-1.yaml"))?.is_file(), "a file of its own again");
    assert_eq!(std::fs::read_to_string(&victim)?, before, "the other file is untouched");

    // A link planted where create expects nothing is moved aside too, not written through.
    std::os::unix::fs::symlink(&victim, root.join("payments/rr-2.yaml"))?;
    let rr2 = build(&write("payments", "rr-2", false), 1_700_000_000_500, "kubernaut-system");
    assert_eq!(sink.create(&rr2).await?.outcome, CreateOutcome::Created);
    assert!(std::fs::symlink_metadata(root.join("payments/rr-2.yaml"))?.is_file());
    assert_eq!(std::fs::read_to_string(&victim)?, before, "the other file is untouched");
    Ok(())
}

/// Temporary names were `.tmp-<pid>-<seq>`: a link planted under one made the sink write a CR
/// into any file the gateway's user could write.
#[tokio::test]
async fn links_planted_under_temporary_names_are_never_written_through() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("payments"))?;
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious")?;
    for seq in 0..20 {
        std::os::unix::fs::symlink(&victim, root.join(format!("payments/.tmp-{}-{seq}", std::process::id())))?;
    }
    let sink = DirSink::new(&root);
    for i in 0..5 {
        let rr = build(&write("payments", &format!("rr-{i}"), false), 1_700_000_000_500, "kubernaut-system");
        sink.create(&rr).await?;
        sink.add_occurrences(&target("payments", &format!("rr-{i}")), 1, 1_700_000_001_000).await?;
    }
    assert_eq!(std::fs::read_to_string(&victim)?, "precious");
    assert_eq!(named(&root.join("payments"), "rr-").len(), 5);
    Ok(())
}
