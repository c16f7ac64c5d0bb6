use std::collections::HashMap as Map;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use breakwater_proto::v1 as pb;
use breakwater_signal::ManualClock;

use super::*;
use crate::crd::{RemediationRequest, StormType, StormWrite, time};
use crate::sink::{Created, MemorySink};

const T0: i64 = 1_700_000_000_000;
const FP: &str = "1111111111111111111111111111111111111111111111111111111111111111";

/// A [`MemorySink`] whose next `fail_updates` count updates fail (for good when `permanent`).
struct FlakySink {
    inner: MemorySink,
    fail_updates: AtomicU32,
    permanent: bool,
}

#[async_trait]
impl RemediationSink for FlakySink {
    async fn create(&self, rr: &RemediationRequest) -> Result<Created, SinkError> {
        self.inner.create(rr).await
    }

    async fn get(&self, target: &CrRef) -> Result<Option<RemediationRequest>, SinkError> {
        self.inner.get(target).await
    }

    async fn update_counts(&self, target: &CrRef, update: &CountUpdate) -> Result<UpdateOutcome, SinkError> {
        let failing = self.fail_updates.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if failing && self.permanent {
            return Err(SinkError::InvalidName(target.name.clone()));
        }
        if failing {
            return Err(SinkError::Conflict { attempts: 10 });
        }
        self.inner.update_counts(target, update).await
    }

    async fn find_latest(
        &self,
        namespace: &str,
        fingerprint: &str,
    ) -> Result<Option<crate::sink::LatestCr>, SinkError> {
        self.inner.find_latest(namespace, fingerprint).await
    }

    async fn add_occurrences(&self, target: &CrRef, n: u64, last_seen: i64) -> Result<UpdateOutcome, SinkError> {
        self.inner.add_occurrences(target, n, last_seen).await
    }
}

fn target() -> CrRef {
    CrRef { namespace: "shop".to_owned(), name: "rr-1111111111111111-1".to_owned() }
}

fn signal(pod: &str) -> pb::Signal {
    pb::Signal {
        fingerprint: FP.to_owned(),
        alert_name: "PodOOMKilled".to_owned(),
        severity: pb::Severity::Critical.into(),
        namespace: "shop".to_owned(),
        resource: Some(pb::Resource { kind: "Pod".to_owned(), name: pod.to_owned(), namespace: "shop".to_owned() }),
        labels: Map::from([("environment".to_owned(), "production".to_owned())]),
        received_time_unix_ms: T0,
        source_type: "prometheus-alert".to_owned(),
        source: "prometheus".to_owned(),
        ..pb::Signal::default()
    }
}

fn occurrence(count: u64) -> Write {
    Write {
        shared: Default::default(),
        kind: WriteKind::Occurrence,
        target: target(),
        signal: signal("cart-0"),
        first_seen: T0,
        last_seen: T0 + i64::try_from(count).unwrap_or(0),
        occurrence_count: count,
        identity_only: false,
        storm: None,
    }
}

fn storm_add(pod: &str, alert_count: u64, listed: bool) -> Write {
    Write {
        shared: Default::default(),
        kind: WriteKind::StormAdd,
        target: CrRef { namespace: "shop".to_owned(), name: "storm-2222222222222222-1".to_owned() },
        signal: signal(pod),
        first_seen: 0,
        last_seen: 0,
        occurrence_count: 0,
        identity_only: false,
        storm: Some(StormWrite {
            storm_type: Some(StormType::Rate),
            window_start: T0,
            window_secs: 60,
            alert_count,
            resource_listed: listed,
            resources_omitted: 0,
        }),
    }
}

fn coalescer(sink: Arc<dyn RemediationSink>) -> Coalescer {
    Coalescer::new(sink, Arc::new(ManualClock::new(T0 + 500)), "kubernaut-system", 100)
}

async fn stored(sink: &dyn RemediationSink, at: &CrRef) -> Result<RemediationRequest, Box<dyn std::error::Error>> {
    Ok(sink.get(at).await?.ok_or("CR missing")?)
}

#[tokio::test]
async fn a_burst_of_duplicates_is_one_write() -> Result<(), Box<dyn std::error::Error>> {
    let sink = Arc::new(MemorySink::new());
    let mut create = occurrence(1);
    create.kind = WriteKind::Create;
    sink.create(&crd::build(&create, T0, "kubernaut-system")).await?;
    let coalescer = coalescer(sink.clone());

    for n in 2..=1001 {
        coalescer.offer(occurrence(n));
    }
    assert_eq!(coalescer.pending_len(), 1);
    let report = coalescer.flush().await;
    assert_eq!(report, FlushReport { applied: 1, requeued: 0, dropped: 0 });

    let calls = sink.calls();
    assert_eq!(calls.writes, 1, "1,000 duplicates, one write: {calls:?}");
    assert_eq!(calls.updates, 1);
    assert_eq!(calls.creates, 1, "only the initial create");
    let rr = stored(sink.as_ref(), &target()).await?;
    assert_eq!(rr.spec.deduplication.occurrence_count, 1001);
    assert_eq!(rr.spec.deduplication.last_seen, time(T0 + 1001));
    assert_eq!(coalescer.flush().await, FlushReport::default(), "nothing left");
    Ok(())
}

#[tokio::test]
async fn counts_for_a_missing_cr_create_it_with_the_counts() -> Result<(), Box<dyn std::error::Error>> {
    let sink = Arc::new(MemorySink::new());
    let coalescer = coalescer(sink.clone());
    coalescer.offer(occurrence(4));
    coalescer.offer(occurrence(2));
    assert_eq!(coalescer.flush().await.applied, 1);
    let rr = stored(sink.as_ref(), &target()).await?;
    assert_eq!(rr.spec.deduplication.occurrence_count, 4);
    assert_eq!(rr.spec.signal_fingerprint, FP);
    assert!(!rr.spec.is_storm);
    assert_eq!(sink.calls().creates, 1);
    Ok(())
}

#[tokio::test]
async fn storm_adds_for_a_missing_storm_cr_create_it_with_every_resource() -> Result<(), Box<dyn std::error::Error>> {
    let sink = Arc::new(MemorySink::new());
    let coalescer = coalescer(sink.clone());
    coalescer.offer(storm_add("cart-1", 12, true));
    coalescer.offer(storm_add("cart-2", 14, true));
    coalescer.offer(storm_add("cart-1", 13, false));
    coalescer.flush().await;
    let at = CrRef { namespace: "shop".to_owned(), name: "storm-2222222222222222-1".to_owned() };
    let rr = stored(sink.as_ref(), &at).await?;
    assert!(rr.spec.is_storm);
    assert_eq!(rr.spec.storm_alert_count, Some(14));
    assert_eq!(rr.spec.affected_resources, vec!["shop:Pod:cart-1".to_owned(), "shop:Pod:cart-2".to_owned()]);
    assert_eq!(rr.spec.deduplication.occurrence_count, 1);

    coalescer.offer(storm_add("cart-3", 15, true));
    coalescer.flush().await;
    let rr = stored(sink.as_ref(), &at).await?;
    assert_eq!(rr.spec.storm_alert_count, Some(15));
    assert_eq!(rr.spec.affected_resources.len(), 3);
    Ok(())
}

#[tokio::test]
async fn a_failed_flush_keeps_the_counts_for_the_next() -> Result<(), Box<dyn std::error::Error>> {
    let sink = Arc::new(FlakySink { inner: MemorySink::new(), fail_updates: AtomicU32::new(2), permanent: false });
    let coalescer = coalescer(sink.clone());
    coalescer.offer(occurrence(10));
    assert_eq!(coalescer.flush().await, FlushReport { applied: 0, requeued: 1, dropped: 0 });
    // Lower and higher counts arrive while the entry waits.
    coalescer.offer(occurrence(7));
    coalescer.offer(occurrence(12));
    assert_eq!(coalescer.flush().await, FlushReport { applied: 0, requeued: 1, dropped: 0 });
    assert!(sink.inner.objects().await.is_empty());
    assert_eq!(coalescer.flush().await, FlushReport { applied: 1, requeued: 0, dropped: 0 });
    let rr = stored(sink.as_ref(), &target()).await?;
    assert_eq!(rr.spec.deduplication.occurrence_count, 12);
    Ok(())
}

#[tokio::test]
async fn counts_follow_a_cr_into_the_fallback_namespace() -> Result<(), Box<dyn std::error::Error>> {
    let sink = Arc::new(MemorySink::new().with_only_namespace("kubernaut-system"));
    let coalescer = coalescer(sink.clone());
    coalescer.offer(occurrence(3));
    coalescer.flush().await;
    let moved = CrRef { namespace: "kubernaut-system".to_owned(), name: target().name };
    assert_eq!(stored(sink.as_ref(), &moved).await?.spec.deduplication.occurrence_count, 3);

    coalescer.offer(occurrence(9));
    coalescer.flush().await;
    assert_eq!(stored(sink.as_ref(), &moved).await?.spec.deduplication.occurrence_count, 9);
    assert_eq!(sink.calls().creates, 1, "the placement is remembered, not rediscovered");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_flusher_runs_every_interval_until_stopped() -> Result<(), Box<dyn std::error::Error>> {
    let sink = Arc::new(MemorySink::new());
    let coalescer = Arc::new(coalescer(sink.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let flusher = tokio::spawn({
        let coalescer = Arc::clone(&coalescer);
        async move {
            coalescer
                .run_until(Duration::from_secs(1), async {
                    let _ = stopped.await;
                })
                .await;
        }
    });
    coalescer.offer(occurrence(5));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.calls().updates, 0, "not before the interval");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(stored(sink.as_ref(), &target()).await?.spec.deduplication.occurrence_count, 5);

    let _ = stop.send(());
    flusher.await?;
    coalescer.offer(occurrence(6));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(coalescer.pending_len(), 1, "a stopped flusher flushes no more");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_final_flush_retries_until_drained_or_timed_out() -> Result<(), Box<dyn std::error::Error>> {
    let sink = Arc::new(FlakySink { inner: MemorySink::new(), fail_updates: AtomicU32::new(3), permanent: false });
    let coalescer = coalescer(sink.clone());
    coalescer.offer(occurrence(8));
    assert_eq!(coalescer.final_flush(Duration::from_secs(5)).await, 0);
    assert_eq!(stored(sink.as_ref(), &target()).await?.spec.deduplication.occurrence_count, 8);

    sink.fail_updates.store(u32::MAX, Ordering::SeqCst);
    coalescer.offer(occurrence(9));
    assert_eq!(coalescer.final_flush(Duration::from_secs(2)).await, 1, "bounded, and says what is left");
    Ok(())
}

#[test]
fn count_updates_of_each_kind() {
    let write = occurrence(3);
    let update = count_update(&write);
    assert_eq!(
        update,
        CountUpdate {
            occurrence_count: 3,
            window_start: T0,
            last_seen: T0 + 3,
            // An incident's counts name it, so only its own CR takes them.
            fingerprint: write.signal.fingerprint.clone(),
            ..CountUpdate::default()
        }
    );
    let update = count_update(&storm_add("cart-9", 21, true));
    assert_eq!(
        update,
        CountUpdate {
            occurrence_count: 0,
            window_start: 0,
            last_seen: T0,
            storm_alert_count: 21,
            affected_resources: vec!["shop:Pod:cart-9".to_owned()],
            affected_resources_omitted: 0,
            resolved_at: 0,
            fingerprint: String::new(),
        }
    );
    assert!(count_update(&storm_add("cart-9", 22, false)).affected_resources.is_empty());
}

#[tokio::test]
async fn a_write_refused_for_good_is_dropped_not_retried_forever() {
    let sink = Arc::new(FlakySink { inner: MemorySink::new(), fail_updates: AtomicU32::new(1), permanent: true });
    let coalescer = coalescer(sink.clone());
    coalescer.offer(occurrence(3));
    assert_eq!(coalescer.flush().await, FlushReport { applied: 0, requeued: 0, dropped: 1 });
    assert_eq!(coalescer.pending_len(), 0);
}

/// Counts answered `QUEUED` survive a crash of crd-writer: the journal hands them to the OS
/// before `offer` returns, and the next process flushes them. Flushed entries leave it.
#[tokio::test]
async fn journaled_counts_survive_a_crash() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0 + 500));
    let sink = Arc::new(MemorySink::new());
    let mut create = occurrence(1);
    create.kind = WriteKind::Create;
    sink.create(&crd::build(&create, T0, "kubernaut-system")).await?;
    let journal = || -> Result<Namespace, Box<dyn std::error::Error>> {
        Ok(breakwater_embedded::EmbeddedStore::open(dir.path(), clock.clone())?.namespace("crd-writer")?)
    };
    {
        let crashed = coalescer(sink.clone()).with_journal(journal()?)?;
        crashed.offer_all([occurrence(2), occurrence(3), storm_add("cart-1", 7, true)]);
        // The process dies here: nothing was flushed.
    }
    let restarted = coalescer(sink.clone()).with_journal(journal()?)?;
    assert_eq!(restarted.pending_len(), 2, "both entries came back");
    let report = restarted.flush().await;
    assert_eq!(report, FlushReport { applied: 1, requeued: 0, dropped: 1 }, "the storm CR was never created");
    assert_eq!(stored(sink.as_ref(), &target()).await?.spec.deduplication.occurrence_count, 3);
    drop(restarted);
    let again = coalescer(sink.clone()).with_journal(journal()?)?;
    assert_eq!(again.pending_len(), 0, "flushed entries left the journal");
    Ok(())
}

/// Counts of a window whose own CR does not exist (a repeat raced its window's first alert,
/// which found the incident's open CR under another name) go to that open CR, merged per
/// window, and later flushes go straight there; once the CR is finished past the cooldown,
/// they create their own CR, pointing at it.
#[tokio::test]
async fn counts_of_a_missing_cr_go_to_the_incidents_cr_that_counts() -> Result<(), Box<dyn std::error::Error>> {
    let sink = Arc::new(MemorySink::new());
    let open = CrRef { namespace: "shop".to_owned(), name: "rr-1111111111111111-0".to_owned() };
    let mut first = occurrence(1);
    first.kind = WriteKind::Create;
    first.target = open.clone();
    first.first_seen = T0 - 400_000;
    first.last_seen = T0 - 400_000;
    sink.create(&crd::build(&first, T0 - 400_000, "kubernaut-system")).await?;
    let flusher = coalescer(sink.clone());

    // Dedup's new window (T0) counted 3 alerts on the window's own name.
    flusher.offer(occurrence(3));
    assert_eq!(flusher.flush().await, FlushReport { applied: 1, requeued: 0, dropped: 0 });
    assert_eq!(stored(sink.as_ref(), &open).await?.spec.deduplication.occurrence_count, 4);
    assert!(sink.get(&target()).await?.is_none(), "no second CR for the incident");
    flusher.offer(occurrence(5));
    flusher.flush().await;
    assert_eq!(stored(sink.as_ref(), &open).await?.spec.deduplication.occurrence_count, 6, "merged per window");
    let finds = sink.calls().finds;
    flusher.offer(occurrence(6));
    flusher.flush().await;
    assert_eq!(sink.calls().finds, finds, "the relocation is remembered");

    // Finished long ago: the next window's counts make a CR of their own, linked to it.
    let sink = Arc::new(MemorySink::new());
    let mut finished = crd::build(&first, T0 - 400_000, "kubernaut-system");
    finished.status = Some(crate::crd::RemediationRequestStatus {
        overall_phase: Some("Completed".to_owned()),
        completed_at: Some(time(T0 - 350_000)),
        ..Default::default()
    });
    sink.create(&finished).await?;
    let flusher = coalescer(sink.clone());
    flusher.offer(occurrence(2));
    flusher.flush().await;
    let own = stored(sink.as_ref(), &target()).await?;
    assert_eq!(own.spec.deduplication.occurrence_count, 2);
    assert_eq!(own.spec.deduplication.previous_remediation_request_ref.as_deref(), Some(open.name.as_str()));
    assert_eq!(stored(sink.as_ref(), &open).await?.spec.deduplication.occurrence_count, 1);
    Ok(())
}
