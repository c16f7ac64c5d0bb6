use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use breakwater_signal::ManualClock;

use super::*;
use crate::crd::{self, RemediationRequest, RemediationRequestStatus, time};
use crate::sink::{CountUpdate, Created, DirSink, MemorySink, SinkError, TERMINAL_PHASES, UpdateOutcome};
use crate::writer::DEFAULT_RETRY_AFTER_MS;

const T0: i64 = 1_700_000_000_000;
const FP: &str = "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd";

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn service(sink: Arc<dyn RemediationSink>) -> (CrdWriterGrpc, Arc<Coalescer>) {
    service_with_cooldown(sink, crate::lifecycle::DEFAULT_COOLDOWN)
}

/// A service whose finished CRs count their incident's alerts for `cooldown` (at T0 + 5 s).
fn service_with_cooldown(sink: Arc<dyn RemediationSink>, cooldown: Duration) -> (CrdWriterGrpc, Arc<Coalescer>) {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0 + 5000));
    let config = CrdWriterConfig { max_batch: 50, ..CrdWriterConfig::default() };
    let lifecycle = Arc::new(crate::lifecycle::Lifecycle::new(cooldown));
    let coalescer = Arc::new(
        Coalescer::new(Arc::clone(&sink), Arc::clone(&clock), "kubernaut-system", 100).with_lifecycle(lifecycle),
    );
    (CrdWriterGrpc::new(sink, Arc::clone(&coalescer), clock, &config), coalescer)
}

fn write(kind: pb::WriteKind, name: &str) -> pb::RemediationWrite {
    pb::RemediationWrite {
        kind: kind.into(),
        signal: Some(pb::Signal {
            fingerprint: FP.to_owned(),
            alert_name: "NodeNotReady".to_owned(),
            severity: pb::Severity::Critical.into(),
            namespace: "ops".to_owned(),
            resource: Some(pb::Resource {
                kind: "Pod".to_owned(),
                name: "db-0".to_owned(),
                namespace: "ops".to_owned(),
            }),
            labels: HashMap::from([("environment".to_owned(), "production".to_owned())]),
            received_time_unix_ms: T0,
            source_type: "prometheus-alert".to_owned(),
            source: "prometheus".to_owned(),
            ..pb::Signal::default()
        }),
        remediation: Some(pb::RemediationRef { namespace: "ops".to_owned(), name: name.to_owned() }),
        first_seen_unix_ms: T0,
        last_seen_unix_ms: T0,
        occurrence_count: 1,
        storm_type: match kind {
            pb::WriteKind::StormCreate | pb::WriteKind::StormAdd => pb::StormType::Rate.into(),
            _ => pb::StormType::Unspecified.into(),
        },
        storm_window_start_unix_ms: T0,
        storm_alert_count: 11,
        resource_listed: true,
        resources_omitted: 0,
        dedup_unavailable: false,
        dedup_window_exact: false,
        storm_unavailable: false,
        storm_window_secs: 60,
        find_by_fingerprint: false,
        signal_identity_only: false,
    }
}

async fn call(svc: &CrdWriterGrpc, writes: Vec<pb::RemediationWrite>) -> Result<Vec<pb::WriteResult>, Status> {
    let request = Request::new(pb::WriteRemediationsRequest { writes, shared: None });
    Ok(svc.write_remediations(request).await?.into_inner().results)
}

fn outcome(result: &pb::WriteResult) -> pb::WriteOutcome {
    result.outcome()
}

#[tokio::test]
async fn an_empty_batch_is_fine() -> TestResult {
    let (svc, _) = service(Arc::new(MemorySink::new()));
    assert!(call(&svc, Vec::new()).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn one_result_per_write_in_order() -> TestResult {
    let sink = Arc::new(MemorySink::new());
    let (svc, coalescer) = service(sink.clone());

    let mut bad_fp = write(pb::WriteKind::Create, "rr-bad-fp");
    if let Some(signal) = bad_fp.signal.as_mut() {
        signal.fingerprint = "ABC".to_owned();
    }
    let mut no_signal = write(pb::WriteKind::Create, "rr-no-signal");
    no_signal.signal = None;
    let mut storm_no_type = write(pb::WriteKind::StormCreate, "storm-x");
    storm_no_type.storm_type = pb::StormType::Unspecified.into();
    let writes = vec![
        write(pb::WriteKind::Create, "rr-a"),
        bad_fp,
        write(pb::WriteKind::Occurrence, "rr-a"),
        write(pb::WriteKind::Unspecified, "rr-u"),
        write(pb::WriteKind::StormCreate, "storm-a"),
        write(pb::WriteKind::Create, "Not_A_Name"),
        no_signal,
        write(pb::WriteKind::StormAdd, "storm-a"),
        storm_no_type,
        write(pb::WriteKind::Create, "rr-a"),
    ];
    let results = call(&svc, writes).await?;
    let outcomes: Vec<_> = results.iter().map(outcome).collect();
    use pb::WriteOutcome::*;
    assert_eq!(
        outcomes,
        vec![Created, Failed, Queued, Failed, Created, Failed, Failed, Queued, Failed, AlreadyExisted]
    );
    let errors: Vec<_> = results.iter().map(|r| r.error.as_str()).collect();
    assert_eq!(errors[1], "signal.fingerprint is not 64 lower-case hex characters");
    assert_eq!(errors[3], "kind is unspecified");
    assert_eq!(errors[5], "remediation.name is not a DNS-1123 label of at most 63 characters");
    assert_eq!(errors[6], "signal is missing");
    assert_eq!(errors[8], "storm_type is unspecified");
    assert!(errors.iter().enumerate().all(|(i, e)| e.is_empty() == (outcomes[i] != Failed)));
    assert_eq!(
        results[0].remediation,
        Some(pb::RemediationRef { namespace: "ops".to_owned(), name: "rr-a".to_owned() })
    );
    assert_eq!(results[1].remediation.as_ref().map(|r| r.name.as_str()), Some("rr-bad-fp"));

    assert_eq!(sink.objects().await.len(), 2, "rr-a and storm-a");
    assert_eq!(coalescer.pending_len(), 2, "the occurrence and the storm add wait for the flush");
    Ok(())
}

#[tokio::test]
async fn a_late_resolution_finds_its_incidents_cr_by_fingerprint() -> TestResult {
    let sink = Arc::new(MemorySink::new());
    let (svc, _) = service(sink.clone());
    let late = || pb::RemediationWrite { find_by_fingerprint: true, ..write(pb::WriteKind::Resolution, "") };
    // No CR of the incident yet: nothing to do.
    assert_eq!(outcome(&call(&svc, vec![late()]).await?[0]), pb::WriteOutcome::NothingToDo);
    assert_eq!(
        outcome(&call(&svc, vec![write(pb::WriteKind::Create, "rr-late")]).await?[0]),
        pb::WriteOutcome::Created
    );
    let results = call(&svc, vec![late()]).await?;
    assert_eq!(outcome(&results[0]), pb::WriteOutcome::Queued);
    assert_eq!(results[0].remediation.as_ref().map(|r| r.name.as_str()), Some("rr-late"));
    let at = CrRef { namespace: "ops".to_owned(), name: "rr-late".to_owned() };
    let rr = sink.get(&at).await?.ok_or("the CR")?;
    assert!(rr.spec.deduplication.resolved_at.is_some());
    // Resolved already: nothing more to record.
    assert_eq!(outcome(&call(&svc, vec![late()]).await?[0]), pb::WriteOutcome::NothingToDo);
    // Only a resolution may be looked up; the rest must name their CR.
    let odd = pb::RemediationWrite { find_by_fingerprint: true, ..write(pb::WriteKind::Occurrence, "") };
    assert_eq!(outcome(&call(&svc, vec![odd]).await?[0]), pb::WriteOutcome::Failed);
    Ok(())
}

#[tokio::test]
async fn a_retried_storm_open_still_counts() -> TestResult {
    let sink = Arc::new(MemorySink::new());
    let (svc, coalescer) = service(sink.clone());
    call(&svc, vec![write(pb::WriteKind::StormCreate, "storm-a")]).await?;
    let mut retry = write(pb::WriteKind::StormCreate, "storm-a");
    retry.storm_alert_count = 12;
    if let Some(signal) = retry.signal.as_mut() {
        signal.resource =
            Some(pb::Resource { kind: "Pod".to_owned(), name: "db-1".to_owned(), namespace: "ops".to_owned() });
    }
    let results = call(&svc, vec![retry]).await?;
    assert_eq!(outcome(&results[0]), pb::WriteOutcome::AlreadyExisted);
    coalescer.flush().await;
    let at = CrRef { namespace: "ops".to_owned(), name: "storm-a".to_owned() };
    let rr = sink.get(&at).await?.ok_or("missing")?;
    assert_eq!(rr.spec.storm_alert_count, Some(12));
    assert_eq!(rr.spec.affected_resources, vec!["ops:Pod:db-0".to_owned(), "ops:Pod:db-1".to_owned()]);
    Ok(())
}

#[tokio::test]
async fn a_relocated_create_answers_where_it_landed() -> TestResult {
    let (svc, _) = service(Arc::new(MemorySink::new().with_only_namespace("kubernaut-system")));
    let results = call(&svc, vec![write(pb::WriteKind::Create, "rr-a")]).await?;
    assert_eq!(outcome(&results[0]), pb::WriteOutcome::Created);
    assert_eq!(results[0].remediation.as_ref().map(|r| r.namespace.as_str()), Some("kubernaut-system"));
    Ok(())
}

/// Fails every create with `error()`.
struct BrokenSink(fn() -> SinkError);

#[async_trait]
impl RemediationSink for BrokenSink {
    async fn create(&self, _: &RemediationRequest) -> Result<Created, SinkError> {
        Err((self.0)())
    }

    async fn get(&self, _: &CrRef) -> Result<Option<RemediationRequest>, SinkError> {
        Ok(None)
    }

    async fn update_counts(&self, _: &CrRef, _: &CountUpdate) -> Result<UpdateOutcome, SinkError> {
        Err((self.0)())
    }

    async fn find_latest(&self, _: &str, _: &str) -> Result<Option<crate::sink::LatestCr>, SinkError> {
        Err((self.0)())
    }

    async fn add_occurrences(&self, _: &CrRef, _: u64, _: i64) -> Result<UpdateOutcome, SinkError> {
        Err((self.0)())
    }
}

fn api_error(code: u16, reason: &str) -> kube::Error {
    kube::Error::Api(kube::core::Status::failure("detail that stays in the logs", reason).with_code(code).boxed())
}

#[tokio::test]
async fn failed_creates_say_when_to_retry() -> TestResult {
    let throttled = BrokenSink(|| SinkError::Unavailable {
        attempts: 5,
        retry_after: Some(Duration::from_secs(3)),
        source: api_error(429, "TooManyRequests"),
    });
    let (svc, _) = service(Arc::new(throttled));
    let results =
        call(&svc, vec![write(pb::WriteKind::Create, "rr-a"), write(pb::WriteKind::Occurrence, "rr-a")]).await?;
    assert_eq!(outcome(&results[0]), pb::WriteOutcome::Failed);
    assert_eq!(results[0].error, "kubernetes unavailable");
    assert_eq!(results[0].retry_after_ms, 3000);
    assert_eq!(outcome(&results[1]), pb::WriteOutcome::Queued);

    let rejected = BrokenSink(|| SinkError::Rejected {
        code: 422,
        reason: "Invalid".to_owned(),
        source: api_error(422, "Invalid"),
    });
    let (svc, _) = service(Arc::new(rejected));
    let results = call(&svc, vec![write(pb::WriteKind::StormCreate, "storm-a")]).await?;
    assert_eq!(outcome(&results[0]), pb::WriteOutcome::Failed);
    assert_eq!(results[0].error, "kubernetes rejected the create (422)");
    assert_eq!(results[0].retry_after_ms, DEFAULT_RETRY_AFTER_MS);
    assert!(!results[0].error.contains("detail"), "no raw error text to the client");
    Ok(())
}

#[tokio::test]
async fn an_oversized_batch_is_invalid_argument() -> TestResult {
    let (svc, _) = service(Arc::new(MemorySink::new()));
    let writes = vec![write(pb::WriteKind::Occurrence, "rr-a"); 51];
    let status = call(&svc, writes).await.err().ok_or("accepted 51 writes")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = status.get_details_bad_request().map(|b| b.field_violations).unwrap_or_default();
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, "writes");
    Ok(())
}

#[test]
fn whole_request_errors_map_to_status_codes() {
    assert_eq!(Status::from(Error::Config("x".to_owned())).code(), Code::Internal);
    let sink_err = Error::Sink(SinkError::Conflict { attempts: 10 });
    assert_eq!(Status::from(sink_err).code(), Code::Unavailable);
}

// The dedup of last resort: CREATEs sent while dedup was unavailable.

/// A `CREATE` of `name` sent while dedup was unavailable, for an alert seen at `last_seen`.
fn fallback(name: &str, last_seen: i64) -> pb::RemediationWrite {
    let mut write = write(pb::WriteKind::Create, name);
    write.dedup_unavailable = true;
    write.first_seen_unix_ms = last_seen;
    write.last_seen_unix_ms = last_seen;
    write
}

/// Stores the CR an earlier, normal create of `name` would have made at `created_at`, for
/// fingerprint `fp` in `namespace`, with `status.overallPhase` = `phase`.
async fn seed(
    sink: &dyn RemediationSink,
    at: (&str, &str),
    fp: &str,
    phase: Option<&str>,
    created_at: i64,
) -> Result<CrRef, Box<dyn std::error::Error>> {
    let (namespace, name) = at;
    let mut raw = write(pb::WriteKind::Create, name);
    if let Some(signal) = raw.signal.as_mut() {
        signal.fingerprint = fp.to_owned();
    }
    if let Some(remediation) = raw.remediation.as_mut() {
        remediation.namespace = namespace.to_owned();
    }
    let mut rr = crd::build(&Write::try_from(raw).map_err(|e| e.0)?, created_at, "kubernaut-system");
    // A finished CR says when, as the remediation controller writes it.
    rr.status = phase.map(|p| RemediationRequestStatus {
        overall_phase: Some(p.to_owned()),
        completed_at: TERMINAL_PHASES.contains(&p).then(|| time(created_at)),
        ..Default::default()
    });
    sink.create(&rr).await?;
    Ok(CrRef { namespace: namespace.to_owned(), name: name.to_owned() })
}

fn named(namespace: &str, name: &str) -> Option<pb::RemediationRef> {
    Some(pb::RemediationRef { namespace: namespace.to_owned(), name: name.to_owned() })
}

async fn occurrences(sink: &dyn RemediationSink, at: &CrRef) -> Result<i64, Box<dyn std::error::Error>> {
    Ok(sink.get(at).await?.ok_or_else(|| format!("{at} missing"))?.spec.deduplication.occurrence_count)
}

/// A sink under test, with the directory that must outlive it, if any.
type SinkUnderTest = (Arc<dyn RemediationSink>, Option<tempfile::TempDir>);

/// A memory sink and a directory sink.
fn sinks() -> Result<Vec<SinkUnderTest>, std::io::Error> {
    let dir = tempfile::tempdir()?;
    Ok(vec![(Arc::new(MemorySink::new()), None), (Arc::new(DirSink::new(dir.path())), Some(dir))])
}

#[tokio::test]
async fn a_fallback_create_is_counted_on_the_open_cr_of_its_incident() -> TestResult {
    for (sink, _dir) in sinks()? {
        let (svc, coalescer) = service(Arc::clone(&sink));
        let open = seed(sink.as_ref(), ("ops", "rr-abcdefabcdefabcd-first"), FP, Some("Processing"), T0).await?;

        let results = call(&svc, vec![fallback("rr-abcdefabcdefabcd-window", T0 + 5000)]).await?;
        assert_eq!(outcome(&results[0]), pb::WriteOutcome::AlreadyExisted);
        assert_eq!(results[0].remediation, named("ops", "rr-abcdefabcdefabcd-first"), "names the CR found");
        let rr = sink.get(&open).await?.ok_or("open CR missing")?;
        assert_eq!(rr.spec.deduplication.occurrence_count, 2);
        assert_eq!(rr.spec.deduplication.last_seen, time(T0 + 5000));
        let window = CrRef { namespace: "ops".to_owned(), name: "rr-abcdefabcdefabcd-window".to_owned() };
        assert_eq!(sink.get(&window).await?, None, "no second CR for the incident");
        assert_eq!(coalescer.pending_len(), 0, "counted at once, not queued");
    }
    Ok(())
}

#[tokio::test]
async fn a_cr_in_a_terminal_phase_is_not_open() -> TestResult {
    for phase in TERMINAL_PHASES {
        for (sink, _dir) in sinks()? {
            // Past the cooldown: a new CR, pointing at the finished one.
            let (svc, _) = service_with_cooldown(Arc::clone(&sink), Duration::from_secs(1));
            let finished = seed(sink.as_ref(), ("ops", "rr-done"), FP, Some(phase), T0).await?;
            let results = call(&svc, vec![fallback("rr-window", T0 + 5000)]).await?;
            assert_eq!(outcome(&results[0]), pb::WriteOutcome::Created, "{phase}");
            assert_eq!(results[0].remediation, named("ops", "rr-window"));
            assert_eq!(occurrences(sink.as_ref(), &finished).await?, 1, "{phase}: the closed CR is left alone");
            let new = CrRef { namespace: "ops".to_owned(), name: "rr-window".to_owned() };
            assert_eq!(occurrences(sink.as_ref(), &new).await?, 1);
            let new = sink.get(&new).await?.ok_or("new CR missing")?;
            assert_eq!(new.spec.deduplication.previous_remediation_request_ref.as_deref(), Some("rr-done"));
        }
    }
    // Within the cooldown: counted on the finished CR, marked as after completion.
    for (sink, _dir) in sinks()? {
        let (svc, _) = service_with_cooldown(Arc::clone(&sink), Duration::from_secs(60));
        let done = seed(sink.as_ref(), ("ops", "rr-done"), FP, Some("Completed"), T0).await?;
        let mut later = write(pb::WriteKind::Create, "rr-window");
        later.first_seen_unix_ms = T0 + 4000;
        later.last_seen_unix_ms = T0 + 4000;
        let results = call(&svc, vec![later]).await?;
        assert_eq!(outcome(&results[0]), pb::WriteOutcome::AlreadyExisted);
        assert_eq!(results[0].remediation, named("ops", "rr-done"));
        let rr = sink.get(&done).await?.ok_or("finished CR missing")?;
        assert_eq!(rr.spec.deduplication.occurrence_count, 2);
        assert_eq!(rr.spec.deduplication.occurrences_after_completion, Some(1));
    }
    // No status at all, or an empty or unfinished phase: open.
    for phase in [None, Some(""), Some("Pending"), Some("Executing")] {
        let sink: Arc<dyn RemediationSink> = Arc::new(MemorySink::new());
        let (svc, _) = service(Arc::clone(&sink));
        seed(sink.as_ref(), ("ops", "rr-open"), FP, phase, T0).await?;
        let results = call(&svc, vec![fallback("rr-window", T0 + 5000)]).await?;
        assert_eq!(outcome(&results[0]), pb::WriteOutcome::AlreadyExisted, "{phase:?}");
        assert_eq!(results[0].remediation, named("ops", "rr-open"), "{phase:?}");
    }
    Ok(())
}

/// Issue 14: a repeat counted on a finished CR says when its dedup window should end (the
/// cooldown after the finish), whether the CR was found by a create or named by dedup; a
/// repeat on an open CR says nothing.
#[tokio::test]
async fn a_repeat_on_a_finished_cr_says_when_its_window_ends() -> TestResult {
    for (sink, _dir) in sinks()? {
        let (svc, coalescer) = service_with_cooldown(Arc::clone(&sink), Duration::from_secs(60));
        seed(sink.as_ref(), ("ops", "rr-done"), FP, Some("Completed"), T0).await?;
        let results = call(&svc, vec![write(pb::WriteKind::Create, "rr-window")]).await?;
        assert_eq!(results[0].remediation, named("ops", "rr-done"), "counted on the finished CR");
        assert_eq!(results[0].window_ends_unix_ms, T0 + 60_000, "found by the create");
        // A repeat dedup placed there: the sink knows the phase once it has read the CR.
        let mut repeat = write(pb::WriteKind::Occurrence, "rr-done");
        repeat.occurrence_count = 2;
        coalescer.flush().await;
        let results = call(&svc, vec![repeat.clone()]).await?;
        assert_eq!(outcome(&results[0]), pb::WriteOutcome::Queued);
        assert_eq!(results[0].window_ends_unix_ms, T0 + 60_000, "named by dedup");
        // A repeat on an open CR: no end.
        let open = seed(sink.as_ref(), ("ops", "rr-open"), FP, Some("Processing"), T0).await?;
        coalescer.flush().await;
        repeat.remediation = named(&open.namespace, &open.name);
        let results = call(&svc, vec![repeat]).await?;
        assert_eq!(results[0].window_ends_unix_ms, 0, "an open CR keeps its window");
    }
    Ok(())
}

/// Issue 10, item 3: a repeat that carries only its signal's identity counts on its CR, but
/// never builds one (it has not the labels to), and a create may not be sent so.
#[tokio::test]
async fn a_repeat_with_its_signals_identity_only_counts_but_never_creates() -> TestResult {
    for (sink, _dir) in sinks()? {
        let (svc, coalescer) = service(Arc::clone(&sink));
        let made = seed(sink.as_ref(), ("ops", "rr-made"), FP, None, T0).await?;
        let slim = |name: &str, count| {
            let mut write = write(pb::WriteKind::Occurrence, name);
            write.signal = write.signal.map(|s| pb::Signal {
                fingerprint: s.fingerprint,
                alert_name: s.alert_name,
                ..pb::Signal::default()
            });
            write.signal_identity_only = true;
            write.occurrence_count = count;
            write
        };
        let results = call(&svc, vec![slim("rr-made", 7), slim("rr-missing", 5)]).await?;
        assert_eq!(results.iter().map(outcome).collect::<Vec<_>>(), [pb::WriteOutcome::Queued; 2]);
        coalescer.flush().await;
        assert_eq!(occurrences(sink.as_ref(), &made).await?, 7, "counted on the CR that exists");
        let missing = CrRef { namespace: "ops".to_owned(), name: "rr-missing".to_owned() };
        assert_eq!(sink.get(&missing).await?, None, "no CR built from an identity");
        assert_eq!(coalescer.pending_len(), 0, "dropped, not retried for ever");
        let mut create = write(pb::WriteKind::Create, "rr-new");
        create.signal_identity_only = true;
        let results = call(&svc, vec![create]).await?;
        assert_eq!(outcome(&results[0]), pb::WriteOutcome::Failed);
        assert!(results[0].error.contains("signal_identity_only"), "{}", results[0].error);
    }
    Ok(())
}

#[tokio::test]
async fn crs_of_other_fingerprints_namespaces_and_storms_are_ignored() -> TestResult {
    // Same first 63 characters, so the same label value: only the spec tells them apart.
    let same_label = format!("{}e", &FP[..63]);
    for (sink, _dir) in sinks()? {
        let (svc, _) = service(Arc::clone(&sink));
        let others = [
            seed(sink.as_ref(), ("ops", "rr-other"), &"0".repeat(64), None, T0).await?,
            seed(sink.as_ref(), ("ops", "rr-same-label"), &same_label, None, T0).await?,
            seed(sink.as_ref(), ("shop", "rr-elsewhere"), FP, None, T0).await?,
        ];
        let storm = Write::try_from(write(pb::WriteKind::StormCreate, "storm-ops")).map_err(|e| e.0)?;
        sink.create(&crd::build(&storm, T0, "kubernaut-system")).await?;

        let results = call(&svc, vec![fallback("rr-window", T0 + 5000)]).await?;
        assert_eq!(outcome(&results[0]), pb::WriteOutcome::Created);
        for other in &others {
            assert_eq!(occurrences(sink.as_ref(), other).await?, 1, "{other} was counted");
        }
        let storm = CrRef { namespace: "ops".to_owned(), name: "storm-ops".to_owned() };
        assert_eq!(occurrences(sink.as_ref(), &storm).await?, 1, "a storm CR is not the incident's CR");
    }
    Ok(())
}

#[tokio::test]
async fn the_most_recently_created_open_cr_is_counted() -> TestResult {
    for (sink, _dir) in sinks()? {
        let (svc, _) = service(Arc::clone(&sink));
        let older = seed(sink.as_ref(), ("ops", "rr-b-older"), FP, None, T0).await?;
        let newer = seed(sink.as_ref(), ("ops", "rr-a-newer"), FP, None, T0 + 60_000).await?;
        let closed = seed(sink.as_ref(), ("ops", "rr-c-newest"), FP, Some("Completed"), T0 + 120_000).await?;
        let results = call(&svc, vec![fallback("rr-window", T0 + 130_000)]).await?;
        assert_eq!(results[0].remediation, named("ops", "rr-a-newer"));
        assert_eq!(occurrences(sink.as_ref(), &newer).await?, 2);
        assert_eq!(occurrences(sink.as_ref(), &older).await?, 1);
        assert_eq!(occurrences(sink.as_ref(), &closed).await?, 1);
    }
    Ok(())
}

#[tokio::test]
async fn twenty_concurrent_fallback_creates_all_count_on_the_open_cr() -> TestResult {
    for (sink, _dir) in sinks()? {
        let (svc, _) = service(Arc::clone(&sink));
        let svc = Arc::new(svc);
        let open = seed(sink.as_ref(), ("ops", "rr-first"), FP, None, T0).await?;
        let calls: Vec<_> = (1..=20)
            .map(|i| {
                let svc = Arc::clone(&svc);
                tokio::spawn(async move { call(&svc, vec![fallback("rr-window", T0 + i * 1000)]).await })
            })
            .collect();
        for call in calls {
            let results = call.await??;
            assert_eq!(outcome(&results[0]), pb::WriteOutcome::AlreadyExisted);
            assert_eq!(results[0].remediation, named("ops", "rr-first"));
        }
        let rr = sink.get(&open).await?.ok_or("open CR missing")?;
        assert_eq!(rr.spec.deduplication.occurrence_count, 21, "1 + 20, none lost");
        assert_eq!(rr.spec.deduplication.last_seen, time(T0 + 20_000));
        let window = CrRef { namespace: "ops".to_owned(), name: "rr-window".to_owned() };
        assert_eq!(sink.get(&window).await?, None);
    }
    Ok(())
}

#[tokio::test]
async fn concurrent_fallback_creates_of_a_new_incident_make_one_cr_that_counts_them_all() -> TestResult {
    for (sink, _dir) in sinks()? {
        let (svc, _) = service(Arc::clone(&sink));
        let svc = Arc::new(svc);
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let svc = Arc::clone(&svc);
                tokio::spawn(async move { call(&svc, vec![fallback("rr-window", T0)]).await })
            })
            .collect();
        let mut created = 0;
        for call in calls {
            let results = call.await??;
            assert_eq!(results[0].remediation, named("ops", "rr-window"));
            created += usize::from(outcome(&results[0]) == pb::WriteOutcome::Created);
        }
        assert_eq!(created, 1);
        let window = CrRef { namespace: "ops".to_owned(), name: "rr-window".to_owned() };
        assert_eq!(occurrences(sink.as_ref(), &window).await?, 20, "each alert counted once");
    }
    Ok(())
}

#[tokio::test]
async fn every_create_looks_up_its_incidents_open_cr() -> TestResult {
    let sink = Arc::new(MemorySink::new());
    let (svc, _) = service(sink.clone());
    let first = seed(sink.as_ref(), ("ops", "rr-first"), FP, None, T0).await?;
    let mut later = write(pb::WriteKind::Create, "rr-second");
    later.first_seen_unix_ms = T0 + 4000;
    later.last_seen_unix_ms = T0 + 4000;
    let results = call(&svc, vec![later]).await?;
    assert_eq!(outcome(&results[0]), pb::WriteOutcome::AlreadyExisted, "dedup's new window of an open incident");
    assert_eq!(results[0].remediation, named("ops", "rr-first"));
    assert_eq!(occurrences(sink.as_ref(), &first).await?, 2);
    let calls = sink.calls();
    assert_eq!((calls.finds, calls.creates), (1, 1), "one lookup, no second CR");

    // A racing repeat created the window's own CR first: answered as that CR.
    let other = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let own = seed(sink.as_ref(), ("ops", "rr-own"), other, None, T0).await?;
    let mut create = write(pb::WriteKind::Create, "rr-own");
    if let Some(signal) = create.signal.as_mut() {
        signal.fingerprint = other.to_owned();
    }
    let results = call(&svc, vec![create]).await?;
    assert_eq!(outcome(&results[0]), pb::WriteOutcome::AlreadyExisted);
    assert_eq!(results[0].remediation, named("ops", "rr-own"));
    assert_eq!(occurrences(sink.as_ref(), &own).await?, 1, "its count is the coalescer's to merge");
    let finds = sink.calls().finds;

    // Storm creates ignore the flag: storms are not deduplicated by fingerprint.
    let mut storm = write(pb::WriteKind::StormCreate, "storm-a");
    storm.dedup_unavailable = true;
    assert_eq!(outcome(&call(&svc, vec![storm]).await?[0]), pb::WriteOutcome::Created);
    assert_eq!(sink.calls().finds, finds);
    Ok(())
}

#[tokio::test]
async fn a_cluster_scoped_fallback_create_looks_in_the_fallback_namespace() -> TestResult {
    let sink = Arc::new(MemorySink::new());
    let (svc, _) = service(sink.clone());
    let open = seed(sink.as_ref(), ("kubernaut-system", "rr-first"), FP, None, T0).await?;
    let mut write = fallback("rr-window", T0 + 1000);
    if let Some(remediation) = write.remediation.as_mut() {
        remediation.namespace.clear();
    }
    let results = call(&svc, vec![write]).await?;
    assert_eq!(results[0].remediation, named("kubernaut-system", "rr-first"));
    assert_eq!(occurrences(sink.as_ref(), &open).await?, 2);
    Ok(())
}

/// A [`MemorySink`] whose lookups fail with `error()`.
struct NoLookupSink(MemorySink, fn() -> SinkError);

#[async_trait]
impl RemediationSink for NoLookupSink {
    async fn create(&self, rr: &RemediationRequest) -> Result<Created, SinkError> {
        self.0.create(rr).await
    }

    async fn get(&self, target: &CrRef) -> Result<Option<RemediationRequest>, SinkError> {
        self.0.get(target).await
    }

    async fn update_counts(&self, target: &CrRef, update: &CountUpdate) -> Result<UpdateOutcome, SinkError> {
        self.0.update_counts(target, update).await
    }

    async fn find_latest(&self, _: &str, _: &str) -> Result<Option<crate::sink::LatestCr>, SinkError> {
        Err((self.1)())
    }

    async fn add_occurrences(&self, target: &CrRef, n: u64, last_seen: i64) -> Result<UpdateOutcome, SinkError> {
        self.0.add_occurrences(target, n, last_seen).await
    }
}

#[tokio::test]
async fn a_refused_lookup_creates_as_usual_and_an_unavailable_api_fails_the_write() -> TestResult {
    let forbidden = NoLookupSink(MemorySink::new(), || SinkError::Rejected {
        code: 403,
        reason: "Forbidden".to_owned(),
        source: api_error(403, "Forbidden"),
    });
    let (svc, _) = service(Arc::new(forbidden));
    let results = call(&svc, vec![fallback("rr-window", T0)]).await?;
    assert_eq!(outcome(&results[0]), pb::WriteOutcome::Created, "the alert is not lost to missing RBAC");

    let unavailable = NoLookupSink(MemorySink::new(), || SinkError::Unavailable {
        attempts: 5,
        retry_after: Some(Duration::from_secs(2)),
        source: api_error(503, "ServiceUnavailable"),
    });
    let (svc, _) = service(Arc::new(unavailable));
    let results = call(&svc, vec![fallback("rr-window", T0)]).await?;
    assert_eq!(outcome(&results[0]), pb::WriteOutcome::Failed);
    assert_eq!(results[0].error, "kubernetes unavailable");
    assert_eq!(results[0].retry_after_ms, 2000);
    Ok(())
}

// Issue 13: every writer checks what it is told. Each call below came straight to the port.

fn code_and_field(status: &Status) -> (Code, String) {
    let details = status.get_error_details();
    let field = details
        .bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .or_else(|| details.precondition_failure().and_then(|p| p.violations.first().map(|v| v.subject.clone())))
        .unwrap_or_default();
    (status.code(), field)
}

#[tokio::test]
async fn a_p0_cr_in_kube_system_is_refused_whole() -> TestResult {
    let sink = Arc::new(MemorySink::new());
    let (svc, coalescer) = service(sink.clone());
    let mut attack = write(pb::WriteKind::Create, "rr-evil");
    if let Some(r) = attack.remediation.as_mut() {
        r.namespace = "kube-system".to_owned();
    }
    let writes = vec![write(pb::WriteKind::Create, "rr-fine"), attack, write(pb::WriteKind::Occurrence, "rr-fine")];
    let status = call(&svc, writes).await.unwrap_err();
    assert_eq!(code_and_field(&status), (Code::PermissionDenied, "writes[1].remediation.namespace".to_owned()));
    assert!(sink.objects().await.is_empty(), "nothing of the call was written");
    assert_eq!(coalescer.pending_len(), 0, "nothing of the call was queued");
    Ok(())
}

#[tokio::test]
async fn an_allow_list_limits_the_namespaces() -> TestResult {
    let sink = Arc::new(MemorySink::new());
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let namespaces = NamespacePolicy { allow: vec!["ops".into(), "kubernaut-system".into()], deny: Vec::new() };
    let config = CrdWriterConfig { namespaces, ..CrdWriterConfig::default() };
    let coalescer = Arc::new(Coalescer::new(sink.clone(), Arc::clone(&clock), "kubernaut-system", 100));
    let svc = CrdWriterGrpc::new(sink.clone(), coalescer, clock, &config);
    assert_eq!(outcome(&call(&svc, vec![write(pb::WriteKind::Create, "rr-a")]).await?[0]), pb::WriteOutcome::Created);
    let mut elsewhere = write(pb::WriteKind::Create, "rr-b");
    if let Some(r) = elsewhere.remediation.as_mut() {
        r.namespace = "team-b".to_owned();
    }
    assert_eq!(call(&svc, vec![elsewhere]).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(sink.objects().await.len(), 1);
    Ok(())
}

#[tokio::test]
async fn an_absurd_occurrence_count_is_refused_and_nothing_recorded() -> TestResult {
    for (sink, _dir) in sinks()? {
        let (svc, coalescer) = service(Arc::clone(&sink));
        let cr = seed(sink.as_ref(), ("ops", "rr-real"), FP, None, T0).await?;
        let mut attack = write(pb::WriteKind::Occurrence, "rr-real");
        attack.occurrence_count = i64::MAX as u64;
        let status = call(&svc, vec![write(pb::WriteKind::Occurrence, "rr-real"), attack]).await.unwrap_err();
        assert_eq!(code_and_field(&status), (Code::InvalidArgument, "writes[1].occurrence_count".to_owned()));
        assert_eq!(coalescer.pending_len(), 0, "the valid write of the call was not queued either");
        coalescer.flush().await;
        assert_eq!(occurrences(sink.as_ref(), &cr).await?, 1);

        // A plausible count for the window still goes through.
        let mut fine = write(pb::WriteKind::Occurrence, "rr-real");
        fine.occurrence_count = 7;
        assert_eq!(outcome(&call(&svc, vec![fine]).await?[0]), pb::WriteOutcome::Queued);
        coalescer.flush().await;
        assert_eq!(occurrences(sink.as_ref(), &cr).await?, 7);
    }
    Ok(())
}

/// A CR someone else made in `ops` under `name`: breakwater's shape without its managed-by label.
async fn seed_foreign(sink: &dyn RemediationSink, name: &str) -> Result<CrRef, Box<dyn std::error::Error>> {
    let mut rr = crd::build(&Write::try_from(write(pb::WriteKind::Create, name)).map_err(|e| e.0)?, T0, "x");
    if let Some(labels) = rr.metadata.labels.as_mut() {
        labels.remove(crate::crd::LABEL_MANAGED_BY);
    }
    sink.create(&rr).await?;
    Ok(CrRef { namespace: "ops".to_owned(), name: name.to_owned() })
}

#[tokio::test]
async fn counts_for_a_cr_breakwater_does_not_manage_are_refused_and_change_nothing() -> TestResult {
    for (sink, _dir) in sinks()? {
        let (svc, coalescer) = service(Arc::clone(&sink));
        let cr = seed_foreign(sink.as_ref(), "rr-theirs").await?;
        let before = sink.get(&cr).await?;
        for kind in [pb::WriteKind::Occurrence, pb::WriteKind::Resolution, pb::WriteKind::StormAdd] {
            let mut attack = write(kind, "rr-theirs");
            attack.occurrence_count = 5;
            let status = call(&svc, vec![attack]).await.unwrap_err();
            assert_eq!(
                code_and_field(&status),
                (Code::FailedPrecondition, "writes[0].remediation".to_owned()),
                "{kind:?}"
            );
            assert!(status.message().contains("not managed by breakwater"), "{}", status.message());
        }
        assert_eq!(coalescer.pending_len(), 0);
        coalescer.flush().await;
        assert_eq!(sink.get(&cr).await?, before, "the CR is unchanged");
    }
    Ok(())
}

#[tokio::test]
async fn counts_for_another_incidents_cr_are_refused() -> TestResult {
    for (sink, _dir) in sinks()? {
        let (svc, coalescer) = service(Arc::clone(&sink));
        let cr = seed(sink.as_ref(), ("ops", "rr-real"), FP, None, T0).await?;
        let before = sink.get(&cr).await?;
        let mut attack = write(pb::WriteKind::Resolution, "rr-real");
        if let Some(signal) = attack.signal.as_mut() {
            // Same first 16 characters (what the CR name carries), another incident.
            signal.fingerprint = format!("{}{}", &FP[..16], "0".repeat(48));
        }
        let status = call(&svc, vec![attack]).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("fingerprint differs"), "{}", status.message());
        coalescer.flush().await;
        assert_eq!(sink.get(&cr).await?, before);
        // Its own incident still counts there.
        assert_eq!(
            outcome(&call(&svc, vec![write(pb::WriteKind::Occurrence, "rr-real")]).await?[0]),
            pb::WriteOutcome::Queued
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_cr_made_by_someone_else_after_the_count_was_queued_is_left_alone_at_flush() -> TestResult {
    for (sink, _dir) in sinks()? {
        let (svc, coalescer) = service(Arc::clone(&sink));
        let mut count = write(pb::WriteKind::Occurrence, "rr-later");
        count.occurrence_count = 3;
        assert_eq!(outcome(&call(&svc, vec![count]).await?[0]), pb::WriteOutcome::Queued);
        let cr = seed_foreign(sink.as_ref(), "rr-later").await?;
        let before = sink.get(&cr).await?;
        let report = coalescer.flush().await;
        assert_eq!(report.dropped, 1, "refused for good: {report:?}");
        assert_eq!(sink.get(&cr).await?, before);
    }
    Ok(())
}
