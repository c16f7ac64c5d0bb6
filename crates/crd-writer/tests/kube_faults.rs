//! The Kubernetes sink when a write is committed but its answer is lost (a 504 after the
//! commit, a reset connection), through a real `kube::Client` against the testkit's fake API
//! server. Every test checks the counts stored on the CR, which must be exact: a retry that
//! meets its own earlier write must not count it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use breakwater_crd_writer::crd::{self, CrRef, Write, WriteKind};
use breakwater_crd_writer::sink::{CountUpdate, CreateOutcome, UpdateOutcome};
use breakwater_crd_writer::{
    CrdWriter, CrdWriterConfig, KubeSink, RemediationRequest, RemediationSink, RetryConfig, SinkError,
};
use breakwater_proto::v1 as pb;
use breakwater_testkit::{FakeApiServer, Fault, Verb, eventually};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PLURAL: &str = "remediationrequests";
const T0: i64 = 1_700_000_000_000;

/// The two ways an answer is lost after the commit.
const LOST_ANSWERS: [Fault; 2] = [Fault::CommitThenStatus { code: 504 }, Fault::CommitThenReset];

fn sink(api: &FakeApiServer) -> KubeSink {
    let retry = RetryConfig { max_attempts: 5, initial_backoff_ms: 10, max_backoff_ms: 40 };
    KubeSink::new(api.client_without_retry(), retry, "kubernaut-system")
}

fn incident(name: &str, fingerprint: &str) -> RemediationRequest {
    let write = Write {
        shared: Default::default(),
        kind: WriteKind::Create,
        target: at(name),
        signal: pb::Signal {
            fingerprint: fingerprint.to_owned(),
            alert_name: "KubePodCrashLooping".to_owned(),
            severity: pb::Severity::Critical.into(),
            namespace: "shop".to_owned(),
            resource: Some(pb::Resource {
                kind: "Pod".to_owned(),
                name: "web-1".to_owned(),
                namespace: "shop".to_owned(),
            }),
            labels: HashMap::new(),
            received_time_unix_ms: T0,
            source_type: "prometheus-alert".to_owned(),
            source: "prometheus".to_owned(),
            original_payload: b"{}".to_vec(),
            ..pb::Signal::default()
        },
        first_seen: T0,
        last_seen: T0,
        occurrence_count: 1,
        identity_only: false,
        storm: None,
    };
    crd::build(&write, T0, "kubernaut-system")
}

fn at(name: &str) -> CrRef {
    CrRef { namespace: "shop".to_owned(), name: name.to_owned() }
}

fn stored(api: &FakeApiServer, name: &str) -> Result<RemediationRequest, Box<dyn std::error::Error>> {
    let object = api.get(PLURAL, "shop", name).ok_or_else(|| format!("shop/{name} not stored"))?;
    Ok(serde_json::from_value(object)?)
}

fn occurrences(api: &FakeApiServer, name: &str) -> Result<i64, Box<dyn std::error::Error>> {
    Ok(stored(api, name)?.spec.deduplication.occurrence_count)
}

/// The status codes the client got for requests with this verb, in order (0: no answer).
fn codes(api: &FakeApiServer, verb: Verb) -> Vec<u16> {
    api.request_log().into_iter().filter(|(logged, _, _)| *logged == verb).map(|(_, _, code)| code).collect()
}

#[tokio::test]
async fn a_create_committed_then_lost_is_reported_created_once() -> TestResult {
    for fault in LOST_ANSWERS {
        let api = FakeApiServer::start().await;
        let sink = sink(&api);
        api.inject_for(Verb::Create, fault, 1);
        let created = sink.create(&incident("rr-1", &"c".repeat(64))).await?;
        // Our own create, met by its retry as AlreadyExists, and recognised by its operation id.
        assert_eq!(created.outcome, CreateOutcome::Created, "{fault:?}");
        assert_eq!(codes(&api, Verb::Create), [if fault == LOST_ANSWERS[0] { 504 } else { 0 }, 409], "{fault:?}");
        assert_eq!(api.objects(PLURAL).len(), 1);
        assert_eq!(occurrences(&api, "rr-1")?, 1, "{fault:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_retried_create_that_meets_another_writers_cr_already_existed() -> TestResult {
    let api = FakeApiServer::start().await;
    // A long enough backoff for another writer to create the CR between our two attempts.
    let retry = RetryConfig { max_attempts: 5, initial_backoff_ms: 500, max_backoff_ms: 500 };
    let sink = KubeSink::new(api.client_without_retry(), retry, "kubernaut-system");
    let other = self::sink(&api);
    api.inject_for(Verb::Create, Fault::Status { code: 503, retry_after_secs: None }, 1);
    let ours = tokio::spawn(async move { sink.create(&incident("rr-1", &"c".repeat(64))).await });
    eventually(Duration::from_secs(5), || async { (api.count(Verb::Create) >= 1).then_some(()) }).await;
    assert_eq!(other.create(&incident("rr-1", &"c".repeat(64))).await?.outcome, CreateOutcome::Created);

    assert_eq!(ours.await??.outcome, CreateOutcome::AlreadyExisted, "the CR is the other writer's");
    assert_eq!(codes(&api, Verb::Create), [503, 201, 409]);
    assert_eq!(occurrences(&api, "rr-1")?, 1);
    Ok(())
}

#[tokio::test]
async fn an_increment_committed_then_lost_counts_once() -> TestResult {
    for fault in LOST_ANSWERS {
        let api = FakeApiServer::start().await;
        let sink = sink(&api);
        sink.create(&incident("rr-1", &"c".repeat(64))).await?;
        api.inject_for(Verb::Patch, fault, 1);
        assert_eq!(sink.add_occurrences(&at("rr-1"), 2, T0 + 9000).await?, UpdateOutcome::Updated);
        // The retry's resourceVersion is the one our own commit replaced: 409, then the re-read
        // finds our operation id and stops.
        assert_eq!(codes(&api, Verb::Patch), [if fault == LOST_ANSWERS[0] { 504 } else { 0 }, 409], "{fault:?}");
        assert_eq!(occurrences(&api, "rr-1")?, 3, "{fault:?}: 1 + 2, not 1 + 2 + 2");
        assert_eq!(stored(&api, "rr-1")?.spec.deduplication.last_seen, crd::time(T0 + 9000));
    }
    Ok(())
}

#[tokio::test]
async fn an_increment_whose_connection_reset_before_the_commit_counts_once() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = sink(&api);
    sink.create(&incident("rr-1", &"c".repeat(64))).await?;
    api.inject_for(Verb::Patch, Fault::Reset, 1);
    assert_eq!(sink.add_occurrences(&at("rr-1"), 1, T0).await?, UpdateOutcome::Updated);
    assert_eq!(codes(&api, Verb::Patch), [0, 200]);
    assert_eq!(occurrences(&api, "rr-1")?, 2);
    Ok(())
}

#[tokio::test]
async fn count_merges_stay_exact_when_committed_then_lost() -> TestResult {
    for fault in LOST_ANSWERS {
        let api = FakeApiServer::start().await;
        let sink = sink(&api);
        let mut storm = incident("storm-1", &"s".repeat(64));
        storm.spec.is_storm = true;
        storm.spec.storm_alert_count = Some(11);
        sink.create(&storm).await?;
        api.inject_for(Verb::Patch, fault, 1);
        let update = CountUpdate {
            occurrence_count: 7,
            storm_alert_count: 14,
            affected_resources: vec!["shop:Pod:b".to_owned()],
            ..CountUpdate::default()
        };
        // The retry re-reads counts that already hold the merge: nothing left to write.
        let outcome = sink.update_counts(&at("storm-1"), &update).await?;
        assert_eq!(outcome, UpdateOutcome::Unchanged, "{fault:?}");
        assert_eq!(codes(&api, Verb::Patch).len(), 2, "{fault:?}: the lost write and its refused retry");
        let rr = stored(&api, "storm-1")?;
        assert_eq!((rr.spec.deduplication.occurrence_count, rr.spec.storm_alert_count), (7, Some(14)), "{fault:?}");
    }
    Ok(())
}

#[tokio::test]
async fn concurrent_increments_under_lost_answers_are_counted_exactly() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = Arc::new(sink(&api));
    sink.create(&incident("rr-1", &"c".repeat(64))).await?;
    api.inject_for(Verb::Patch, Fault::CommitThenStatus { code: 504 }, 3);
    api.inject_for(Verb::Patch, Fault::CommitThenReset, 2);
    api.inject_for(Verb::Patch, Fault::Reset, 1);
    api.inject_for(Verb::Get, Fault::CommitThenStatus { code: 504 }, 2);
    let increments: Vec<_> = (1..=10i64)
        .map(|i| {
            let sink = Arc::clone(&sink);
            tokio::spawn(async move { sink.add_occurrences(&at("rr-1"), 1, T0 + i * 1000).await })
        })
        .collect();
    for increment in increments {
        assert_eq!(increment.await??, UpdateOutcome::Updated);
    }
    let lost = codes(&api, Verb::Patch).iter().filter(|code| matches!(code, 0 | 504)).count();
    assert_eq!(lost, 6, "every injected fault hit a patch");
    assert_eq!(occurrences(&api, "rr-1")?, 11, "1 + 10: none lost, none twice");
    Ok(())
}

#[tokio::test]
async fn a_cr_too_large_to_store_is_rejected_without_retries() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = sink(&api);
    // Over etcd's 1.5 MiB, under the API server's 3 MiB body limit: etcd's 500.
    let mut big = incident("rr-big", &"c".repeat(64));
    big.spec.signal_labels.insert("blob".to_owned(), "x".repeat(2 * 1024 * 1024));
    // Over the body limit: the API server's 413.
    let mut huge = incident("rr-huge", &"c".repeat(64));
    huge.spec.signal_labels.insert("blob".to_owned(), "x".repeat(4 * 1024 * 1024));
    for rr in [big, huge] {
        let err = sink.create(&rr).await.err().ok_or("a CR over the size limits was stored")?;
        assert!(matches!(err, SinkError::Rejected { code: 413, .. }), "{err:?}");
    }
    assert_eq!(codes(&api, Verb::Create), [500, 413], "neither is retried");
    assert!(api.objects(PLURAL).is_empty());
    Ok(())
}

/// A create sent while dedup was unavailable, as the edge sends it.
fn fallback_create(name: &str, fingerprint: &str) -> pb::RemediationWrite {
    let rr = incident(name, fingerprint);
    pb::RemediationWrite {
        kind: pb::WriteKind::Create.into(),
        signal: Some(pb::Signal {
            fingerprint: fingerprint.to_owned(),
            alert_name: rr.spec.signal_name,
            namespace: "shop".to_owned(),
            received_time_unix_ms: T0 + 5000,
            source_type: "prometheus-alert".to_owned(),
            ..pb::Signal::default()
        }),
        remediation: Some(pb::RemediationRef { namespace: "shop".to_owned(), name: name.to_owned() }),
        first_seen_unix_ms: T0 + 5000,
        last_seen_unix_ms: T0 + 5000,
        occurrence_count: 1,
        dedup_unavailable: true,
        ..pb::RemediationWrite::default()
    }
}

/// Without dedup, a create that runs into an existing CR counts the alert there. Its own
/// create, committed but answered 504, must not be mistaken for one.
#[tokio::test]
async fn a_fallback_create_committed_then_lost_counts_the_alert_once() -> TestResult {
    for fault in LOST_ANSWERS {
        let api = FakeApiServer::start().await;
        let sink: Arc<dyn RemediationSink> = Arc::new(sink(&api));
        let (grpc, _coalescer) = CrdWriter::new(CrdWriterConfig::default(), sink).into_parts().unwrap();
        api.inject_for(Verb::Create, fault, 1);
        let results =
            grpc.write_all(vec![fallback_create("rr-cccc-window", &"c".repeat(64))], Default::default()).await;
        assert_eq!(results[0].outcome(), pb::WriteOutcome::Created, "{fault:?}");
        assert_eq!(occurrences(&api, "rr-cccc-window")?, 1, "{fault:?}: the alert is the CR, not also an occurrence");
    }
    Ok(())
}

#[tokio::test]
async fn a_fallback_count_on_the_open_cr_committed_then_lost_counts_once() -> TestResult {
    for fault in LOST_ANSWERS {
        let api = FakeApiServer::start().await;
        let sink: Arc<dyn RemediationSink> = Arc::new(sink(&api));
        sink.create(&incident("rr-cccc-first", &"c".repeat(64))).await?;
        let (grpc, _coalescer) = CrdWriter::new(CrdWriterConfig::default(), sink).into_parts().unwrap();
        api.inject_for(Verb::Patch, fault, 1);
        let results =
            grpc.write_all(vec![fallback_create("rr-cccc-window", &"c".repeat(64))], Default::default()).await;
        assert_eq!(results[0].outcome(), pb::WriteOutcome::AlreadyExisted, "{fault:?}");
        assert_eq!(occurrences(&api, "rr-cccc-first")?, 2, "{fault:?}");
        assert!(api.get(PLURAL, "shop", "rr-cccc-window").is_none());
    }
    Ok(())
}

/// A patch the API server keeps refusing with a 4xx is reported once and dropped by the
/// flusher, not retried every flush for good; a 403 (RBAC an operator can fix) is kept.
#[tokio::test]
async fn a_count_patch_refused_with_a_4xx_is_dropped_once_not_retried_for_ever() -> TestResult {
    use breakwater_crd_writer::Coalescer;
    use breakwater_signal::SystemClock;
    for (code, permanent) in [(415, true), (405, true), (400, true), (403, false)] {
        let api = FakeApiServer::start().await;
        let sink: Arc<dyn RemediationSink> = Arc::new(sink(&api));
        sink.create(&incident("rr-1", &"c".repeat(64))).await?;
        let coalescer = Coalescer::new(sink, Arc::new(SystemClock), "kubernaut-system", 100);
        let mut repeat = Write { kind: WriteKind::Occurrence, occurrence_count: 5, ..occurrence_of("rr-1") };
        repeat.last_seen = T0 + 1000;
        coalescer.offer(repeat);
        api.inject_for(Verb::Patch, Fault::Status { code, retry_after_secs: None }, 100);
        let first = coalescer.flush().await;
        let second = coalescer.flush().await;
        if permanent {
            assert_eq!((first.dropped, first.requeued), (1, 0), "{code}: {first:?}");
            assert_eq!(coalescer.pending_len(), 0, "{code}: nothing left to retry");
            assert_eq!(codes(&api, Verb::Patch).len(), 1, "{code}: one refused patch, not one per flush");
        } else {
            assert_eq!((second.dropped, second.requeued), (0, 1), "{code}: kept for the next flush: {second:?}");
        }
    }
    Ok(())
}

/// A duplicate of the incident `rr-1` (as dedup reports it to crd-writer).
fn occurrence_of(name: &str) -> Write {
    let rr = incident(name, &"c".repeat(64));
    Write {
        shared: Default::default(),
        kind: WriteKind::Occurrence,
        target: at(name),
        signal: pb::Signal {
            fingerprint: rr.spec.signal_fingerprint.clone(),
            alert_name: "KubePodCrashLooping".to_owned(),
            namespace: "shop".to_owned(),
            received_time_unix_ms: T0,
            ..pb::Signal::default()
        },
        first_seen: T0,
        last_seen: T0,
        occurrence_count: 1,
        identity_only: false,
        storm: None,
    }
}
