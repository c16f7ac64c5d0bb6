use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use breakwater_signal::ManualClock;

use super::*;
use crate::crd::RemediationRequest;
use crate::sink::{CountUpdate, Created, MemorySink, UpdateOutcome};

const T0: i64 = 1_700_000_000_000;
const FP: &str = "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd";

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn service(sink: Arc<dyn RemediationSink>) -> (CrdWriterGrpc, Arc<Coalescer>) {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let config = CrdWriterConfig { max_batch: 50, ..CrdWriterConfig::default() };
    let coalescer = Arc::new(Coalescer::new(Arc::clone(&sink), Arc::clone(&clock), "kubernaut-system", 100));
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
    }
}

async fn call(svc: &CrdWriterGrpc, writes: Vec<pb::RemediationWrite>) -> Result<Vec<pb::WriteResult>, Status> {
    let request = Request::new(pb::WriteRemediationsRequest { writes });
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
