//! The Kubernetes sink against the testkit's fake API server, through a real `kube::Client`
//! (built without kube's own retry, as `sink_from_config` builds it).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use breakwater_crd_writer::crd::{self, CrRef, Write, WriteKind};
use breakwater_crd_writer::sink::{CountUpdate, CreateOutcome, UpdateOutcome};
use breakwater_crd_writer::{
    CrdWriter, CrdWriterConfig, KubeSink, RemediationRequest, RemediationSink, RetryConfig, SinkError,
};
use breakwater_proto::v1 as pb;
use breakwater_testkit::{FakeApiServer, Fault, Verb, eventually};
use kube::api::{Patch, PatchParams};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PLURAL: &str = "remediationrequests";
const T0: i64 = 1_700_000_000_000;

fn fast_retry(max_attempts: u32) -> RetryConfig {
    RetryConfig { max_attempts, initial_backoff_ms: 10, max_backoff_ms: 40 }
}

fn sink(api: &FakeApiServer, max_attempts: u32) -> KubeSink {
    KubeSink::new(api.client_without_retry(), fast_retry(max_attempts), "kubernaut-system")
}

fn incident(namespace: &str, name: &str) -> RemediationRequest {
    incident_of(namespace, name, &"c".repeat(64), T0)
}

/// The CR of a new incident of `fingerprint`, as built at `now`.
fn incident_of(namespace: &str, name: &str, fingerprint: &str, now: i64) -> RemediationRequest {
    let write = Write {
        shared: Default::default(),
        kind: WriteKind::Create,
        target: CrRef { namespace: namespace.to_owned(), name: name.to_owned() },
        signal: pb::Signal {
            fingerprint: fingerprint.to_owned(),
            alert_name: "KubeDeploymentReplicasMismatch".to_owned(),
            severity: pb::Severity::Warning.into(),
            namespace: namespace.to_owned(),
            resource: Some(pb::Resource {
                kind: "Deployment".to_owned(),
                name: "web".to_owned(),
                namespace: namespace.to_owned(),
            }),
            labels: HashMap::from([("environment".to_owned(), "staging".to_owned())]),
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
    crd::build(&write, now, "kubernaut-system")
}

fn stored(api: &FakeApiServer, namespace: &str, name: &str) -> Result<RemediationRequest, Box<dyn std::error::Error>> {
    let object = api.get(PLURAL, namespace, name).ok_or_else(|| format!("{namespace}/{name} not stored"))?;
    Ok(serde_json::from_value(object)?)
}

fn at(namespace: &str, name: &str) -> CrRef {
    CrRef { namespace: namespace.to_owned(), name: name.to_owned() }
}

#[tokio::test]
async fn create_then_already_exists_is_idempotent() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = sink(&api, 5);
    let rr = incident("shop", "rr-1");
    let first = sink.create(&rr).await?;
    assert_eq!((first.outcome, first.namespace.as_str()), (CreateOutcome::Created, "shop"));
    let second = sink.create(&rr).await?;
    assert_eq!((second.outcome, second.namespace.as_str()), (CreateOutcome::AlreadyExisted, "shop"));
    assert_eq!(api.objects(PLURAL).len(), 1);
    assert_eq!(api.count(Verb::Create), 2, "AlreadyExists is not retried");

    let back = stored(&api, "shop", "rr-1")?;
    assert_eq!(back.spec, rr.spec, "the CR survives the trip through the API as JSON");
    assert_eq!(sink.get(&at("shop", "rr-1")).await?.map(|r| r.spec), Some(rr.spec));
    assert_eq!(sink.get(&at("shop", "rr-2")).await?, None);
    Ok(())
}

/// The API server's 429 is plain text with only a `Retry-After` header; the sink waits that long.
#[tokio::test]
async fn a_429_is_retried_after_the_time_its_retry_after_header_asks_for() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = sink(&api, 5);
    api.inject(Fault::Status { code: 429, retry_after_secs: Some(2) }, 1);
    let started = Instant::now();
    let created = sink.create(&incident("shop", "rr-1")).await?;
    assert_eq!(created.outcome, CreateOutcome::Created);
    // A lower bound only: the backoff alone (10 ms) would be far shorter.
    assert!(started.elapsed() >= Duration::from_secs(2), "waited {:?}, not Retry-After", started.elapsed());
    let codes: Vec<u16> = api.request_log().iter().map(|(_, _, code)| *code).collect();
    assert_eq!(codes, vec![429, 201]);
    assert!(api.get(PLURAL, "shop", "rr-1").is_some());
    Ok(())
}

#[tokio::test]
async fn a_503_twice_then_success() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = sink(&api, 5);
    api.inject(Fault::Status { code: 503, retry_after_secs: None }, 2);
    assert_eq!(sink.create(&incident("shop", "rr-1")).await?.outcome, CreateOutcome::Created);
    let codes: Vec<u16> = api.request_log().iter().map(|(_, _, code)| *code).collect();
    assert_eq!(codes, vec![503, 503, 201]);
    Ok(())
}

#[tokio::test]
async fn a_persistent_500_fails_after_max_attempts() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = sink(&api, 3);
    api.inject(Fault::Status { code: 500, retry_after_secs: None }, 100);
    let err = sink.create(&incident("shop", "rr-1")).await.err().ok_or("created despite 500s")?;
    assert!(matches!(err, SinkError::Unavailable { attempts: 3, retry_after: None, .. }), "{err:?}");
    assert_eq!(api.count(Verb::Create), 3);
    assert!(api.objects(PLURAL).is_empty());
    Ok(())
}

#[tokio::test]
async fn a_429_that_outlasts_the_attempts_passes_its_retry_after_on() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = KubeSink::new(api.client_without_retry(), fast_retry(1), "kubernaut-system");
    api.inject(Fault::Status { code: 429, retry_after_secs: Some(7) }, 1);
    let err = sink.create(&incident("shop", "rr-1")).await.err().ok_or("created despite a 429")?;
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    Ok(())
}

#[tokio::test]
async fn client_errors_are_not_retried() -> TestResult {
    for code in [400, 403, 422] {
        let api = FakeApiServer::start().await;
        let sink = sink(&api, 5);
        api.inject(Fault::Status { code, retry_after_secs: None }, 5);
        let err = sink.create(&incident("shop", "rr-1")).await.err().ok_or("created despite a client error")?;
        assert!(matches!(err, SinkError::Rejected { code: c, .. } if c == code), "{code}: {err:?}");
        assert_eq!(api.count(Verb::Create), 1, "{code} was retried");
    }
    Ok(())
}

#[tokio::test]
async fn a_missing_namespace_falls_back_with_origin_labels() -> TestResult {
    let api = FakeApiServer::start().await;
    api.set_missing_namespace("ghost");
    let sink = sink(&api, 5);
    let created = sink.create(&incident("ghost", "rr-1")).await?;
    assert_eq!((created.outcome, created.namespace.as_str()), (CreateOutcome::Created, "kubernaut-system"));
    let rr = stored(&api, "kubernaut-system", "rr-1")?;
    let labels = rr.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get(crd::LABEL_ORIGIN_NAMESPACE).map(String::as_str), Some("ghost"));
    assert_eq!(labels.get(crd::LABEL_CLUSTER_SCOPED).map(String::as_str), Some("true"));
    assert!(api.get(PLURAL, "ghost", "rr-1").is_none());

    // A retry of the same create lands on the fallback CR again.
    assert_eq!(sink.create(&incident("ghost", "rr-1")).await?.outcome, CreateOutcome::AlreadyExisted);
    Ok(())
}

#[tokio::test]
async fn count_updates_merge_and_write_only_on_change() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = sink(&api, 5);
    let target = at("shop", "rr-1");
    assert_eq!(sink.update_counts(&target, &CountUpdate::default()).await?, UpdateOutcome::NotFound);
    sink.create(&incident("shop", "rr-1")).await?;

    let update = CountUpdate { occurrence_count: 6, last_seen: T0 + 6000, ..CountUpdate::default() };
    assert_eq!(sink.update_counts(&target, &update).await?, UpdateOutcome::Updated);
    let stale = CountUpdate { occurrence_count: 2, last_seen: T0 + 1000, ..CountUpdate::default() };
    assert_eq!(sink.update_counts(&target, &stale).await?, UpdateOutcome::Unchanged);
    assert_eq!(api.count(Verb::Patch), 1, "an unchanged merge is not written");

    let rr = stored(&api, "shop", "rr-1")?;
    assert_eq!(rr.spec.deduplication.occurrence_count, 6);
    assert_eq!(rr.spec.deduplication.last_seen, crd::time(T0 + 6000));
    assert_eq!(rr.spec.signal_name, "KubeDeploymentReplicasMismatch", "a merge patch leaves the rest alone");
    Ok(())
}

#[tokio::test]
async fn a_conflicting_write_between_read_and_patch_still_ends_at_the_max() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = sink(&api, 5);
    let target = at("shop", "rr-1");
    sink.create(&incident("shop", "rr-1")).await?;

    // Our patch is held back while another writer (say, the controller) replaces the CR.
    api.inject_for(Verb::Patch, Fault::Latency(Duration::from_millis(500)), 1);
    let ours = tokio::spawn({
        let target = target.clone();
        async move {
            let update = CountUpdate { occurrence_count: 5, ..CountUpdate::default() };
            sink.update_counts(&target, &update).await
        }
    });
    eventually(Duration::from_secs(5), || async { (api.count(Verb::Get) >= 1).then_some(()) }).await;

    let rrs: kube::Api<RemediationRequest> = kube::Api::namespaced(api.client_without_retry(), "shop");
    let mut theirs = rrs.get("rr-1").await?;
    theirs.spec.deduplication.occurrence_count = 3;
    theirs.spec.signal_labels.insert("touched-by".to_owned(), "controller".to_owned());
    rrs.replace("rr-1", &kube::api::PostParams::default(), &theirs).await?;

    assert_eq!(ours.await??, UpdateOutcome::Updated);
    let patches: Vec<u16> =
        api.request_log().iter().filter(|(verb, _, _)| *verb == Verb::Patch).map(|(_, _, code)| *code).collect();
    assert_eq!(patches, vec![409, 200], "the stale patch was refused, then merged again");
    let rr = stored(&api, "shop", "rr-1")?;
    assert_eq!(rr.spec.deduplication.occurrence_count, 5);
    assert_eq!(rr.spec.signal_labels.get("touched-by").map(String::as_str), Some("controller"));
    Ok(())
}

#[tokio::test]
async fn concurrent_count_updates_end_at_the_max() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = std::sync::Arc::new(sink(&api, 5));
    let target = at("shop", "rr-1");
    sink.create(&incident("shop", "rr-1")).await?;
    let updates: Vec<_> = (1..=12u64)
        .map(|n| {
            let sink = std::sync::Arc::clone(&sink);
            let target = target.clone();
            tokio::spawn(async move {
                sink.update_counts(&target, &CountUpdate { occurrence_count: n, ..CountUpdate::default() }).await
            })
        })
        .collect();
    for update in updates {
        update.await??;
    }
    assert_eq!(stored(&api, "shop", "rr-1")?.spec.deduplication.occurrence_count, 12);
    Ok(())
}

#[tokio::test]
async fn storm_counts_and_resources_are_patched() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = sink(&api, 5).with_resource_cap(2);
    let mut rr = incident("shop", "storm-1");
    rr.spec.is_storm = true;
    rr.spec.storm_alert_count = Some(11);
    rr.spec.affected_resources = vec!["shop:Pod:a".to_owned()];
    sink.create(&rr).await?;
    let update = CountUpdate {
        storm_alert_count: 14,
        affected_resources: vec!["shop:Pod:b".to_owned(), "shop:Pod:c".to_owned()],
        affected_resources_omitted: 4,
        ..CountUpdate::default()
    };
    assert_eq!(sink.update_counts(&at("shop", "storm-1"), &update).await?, UpdateOutcome::Updated);
    let rr = stored(&api, "shop", "storm-1")?;
    assert_eq!(rr.spec.storm_alert_count, Some(14));
    assert_eq!(rr.spec.affected_resources, vec!["shop:Pod:a".to_owned(), "shop:Pod:b".to_owned()]);
    assert_eq!(rr.spec.affected_resources_omitted, Some(5));
    Ok(())
}

/// Sets `status.overallPhase` through the status subresource, as the remediation controller does.
async fn set_phase(api: &FakeApiServer, namespace: &str, name: &str, phase: &str) -> TestResult {
    let rrs: kube::Api<RemediationRequest> = kube::Api::namespaced(api.client_without_retry(), namespace);
    let patch = Patch::Merge(serde_json::json!({ "status": { "overallPhase": phase } }));
    rrs.patch_status(name, &PatchParams::default(), &patch).await?;
    Ok(())
}

#[tokio::test]
async fn find_open_lists_by_the_fingerprint_label() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = sink(&api, 5);
    let fp = "c".repeat(64);
    assert_eq!(sink.find_open("shop", &fp).await?, None);

    sink.create(&incident_of("shop", "rr-older", &fp, T0)).await?;
    sink.create(&incident_of("shop", "rr-newer", &fp, T0 + 1000)).await?;
    sink.create(&incident_of("shop", "rr-other", &"d".repeat(64), T0 + 2000)).await?;
    // Same label value (the first 63 characters), another incident.
    sink.create(&incident_of("shop", "rr-same-label", &format!("{}d", &fp[..63]), T0 + 3000)).await?;
    sink.create(&incident_of("billing", "rr-elsewhere", &fp, T0 + 4000)).await?;
    let lists = api.count(Verb::List);

    assert_eq!(sink.find_open("shop", &fp).await?, Some(at("shop", "rr-newer")));
    assert_eq!(api.count(Verb::List), lists + 1, "one list call");
    assert_eq!(api.count(Verb::Get), 0, "the list is enough");

    set_phase(&api, "shop", "rr-newer", "Completed").await?;
    assert_eq!(sink.find_open("shop", &fp).await?, Some(at("shop", "rr-older")), "a completed CR is not open");
    set_phase(&api, "shop", "rr-older", "Processing").await?;
    assert_eq!(sink.find_open("shop", &fp).await?, Some(at("shop", "rr-older")), "a phase in progress is open");
    set_phase(&api, "shop", "rr-older", "Timeout").await?;
    assert_eq!(sink.find_open("shop", &fp).await?, None);
    assert_eq!(sink.find_open("billing", &fp).await?, Some(at("billing", "rr-elsewhere")));
    Ok(())
}

#[tokio::test]
async fn find_open_retries_a_throttled_list() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = sink(&api, 5);
    sink.create(&incident("shop", "rr-1")).await?;
    api.inject_for(Verb::List, Fault::Status { code: 429, retry_after_secs: None }, 2);
    assert_eq!(sink.find_open("shop", &"c".repeat(64)).await?, Some(at("shop", "rr-1")));
    assert_eq!(api.count(Verb::List), 3);
    Ok(())
}

#[tokio::test]
async fn an_increment_survives_a_conflicting_write_between_read_and_patch() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = sink(&api, 5);
    let target = at("shop", "rr-1");
    assert_eq!(sink.add_occurrences(&target, 1, T0).await?, UpdateOutcome::NotFound);
    sink.create(&incident("shop", "rr-1")).await?;

    // Our patch is held back while another replica counts 4 alerts on the CR.
    api.inject_for(Verb::Patch, Fault::Latency(Duration::from_millis(500)), 1);
    let ours = tokio::spawn({
        let target = target.clone();
        async move { sink.add_occurrences(&target, 1, T0 + 9000).await }
    });
    eventually(Duration::from_secs(5), || async { (api.count(Verb::Get) >= 1).then_some(()) }).await;
    let rrs: kube::Api<RemediationRequest> = kube::Api::namespaced(api.client_without_retry(), "shop");
    let mut theirs = rrs.get("rr-1").await?;
    theirs.spec.deduplication.occurrence_count = 5;
    rrs.replace("rr-1", &kube::api::PostParams::default(), &theirs).await?;

    assert_eq!(ours.await??, UpdateOutcome::Updated);
    let patches: Vec<u16> =
        api.request_log().iter().filter(|(verb, _, _)| *verb == Verb::Patch).map(|(_, _, code)| *code).collect();
    assert_eq!(patches, vec![409, 200], "the stale increment was refused, then applied to the new count");
    let rr = stored(&api, "shop", "rr-1")?;
    assert_eq!(rr.spec.deduplication.occurrence_count, 6, "5 + ours, not 1 + ours");
    assert_eq!(rr.spec.deduplication.last_seen, crd::time(T0 + 9000));
    Ok(())
}

#[tokio::test]
async fn concurrent_increments_are_all_counted() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = Arc::new(sink(&api, 5));
    let target = at("shop", "rr-1");
    sink.create(&incident("shop", "rr-1")).await?;
    let increments: Vec<_> = (1..=10i64)
        .map(|i| {
            let sink = Arc::clone(&sink);
            let target = target.clone();
            tokio::spawn(async move { sink.add_occurrences(&target, 1, T0 + i * 1000).await })
        })
        .collect();
    for increment in increments {
        assert_eq!(increment.await??, UpdateOutcome::Updated);
    }
    let rr = stored(&api, "shop", "rr-1")?;
    assert_eq!(rr.spec.deduplication.occurrence_count, 11, "1 + 10: no increment lost to a race");
    // Whole seconds: Kubernetes times have no fraction.
    assert_eq!(rr.spec.deduplication.last_seen, crd::time(T0 + 10_000));
    Ok(())
}

/// Counters recorded on this thread, by `name{label=value,...}` with sorted labels.
#[derive(Default)]
struct Counters(Mutex<BTreeMap<String, Arc<AtomicU64>>>);

struct Count(Arc<AtomicU64>);

impl metrics::CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

impl Counters {
    fn get(&self, key: &str) -> u64 {
        let counters = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counters.get(key).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl metrics::Recorder for Counters {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let mut counters = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        metrics::Counter::from_arc(Arc::new(Count(Arc::clone(counters.entry(name).or_default()))))
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

fn create_write(name: &str, fingerprint: &str, dedup_unavailable: bool) -> pb::RemediationWrite {
    let rr = incident_of("shop", name, fingerprint, T0);
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
        dedup_unavailable,
        ..pb::RemediationWrite::default()
    }
}

/// The whole fallback through the gRPC face, on one thread so its metrics can be read.
#[test]
fn fallback_creates_against_the_api_server() -> TestResult {
    let counters = Counters::default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    metrics::with_local_recorder(&counters, || runtime.block_on(fallback_scenario()))?;
    assert_eq!(counters.get("breakwater_kubernetes_requests_total{code=200,verb=list}"), 3);
    assert_eq!(counters.get("breakwater_crd_dedup_fallback_total{outcome=counted_on_open}"), 1);
    assert_eq!(counters.get("breakwater_crd_dedup_fallback_total{outcome=created}"), 1);
    assert_eq!(counters.get("breakwater_crd_writes_total{kind=create,outcome=already_existed}"), 1);
    assert_eq!(counters.get("breakwater_crd_writes_total{kind=create,outcome=created}"), 2);
    Ok(())
}

async fn fallback_scenario() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink: Arc<dyn RemediationSink> = Arc::new(sink(&api, 5));
    let fp = "c".repeat(64);
    sink.create(&incident_of("shop", "rr-cccc-first", &fp, T0)).await?;
    // No cooldown: a finished CR counts nothing more (see `lifecycle`).
    let (grpc, _coalescer) = CrdWriter::new(CrdWriterConfig::default(), Arc::clone(&sink))
        .with_cooldown(std::time::Duration::ZERO)
        .into_parts()
        .unwrap();

    // Dedup answered: one lookup by label (no open CR of the incident), then the create.
    let results = grpc.write_all(vec![create_write("rr-dddd-first", &"d".repeat(64), false)], Default::default()).await;
    assert_eq!(results[0].outcome(), pb::WriteOutcome::Created);
    assert_eq!(api.count(Verb::List), 1, "one list before the create");

    // Dedup down: counted on the CR the incident already has.
    let results = grpc.write_all(vec![create_write("rr-cccc-window", &fp, true)], Default::default()).await;
    assert_eq!(results[0].outcome(), pb::WriteOutcome::AlreadyExisted);
    let named = results[0].remediation.as_ref().map(|r| (r.namespace.as_str(), r.name.as_str()));
    assert_eq!(named, Some(("shop", "rr-cccc-first")));
    assert_eq!(api.count(Verb::List), 2);
    let rr = stored(&api, "shop", "rr-cccc-first")?;
    assert_eq!(rr.spec.deduplication.occurrence_count, 2);
    assert_eq!(rr.spec.deduplication.last_seen, crd::time(T0 + 5000));
    assert!(api.get(PLURAL, "shop", "rr-cccc-window").is_none());

    // Once the incident is remediated, a new alert is a new incident.
    set_phase(&api, "shop", "rr-cccc-first", "Completed").await?;
    let results = grpc.write_all(vec![create_write("rr-cccc-window", &fp, true)], Default::default()).await;
    assert_eq!(results[0].outcome(), pb::WriteOutcome::Created);
    assert_eq!(stored(&api, "shop", "rr-cccc-first")?.spec.deduplication.occurrence_count, 2);
    let new = stored(&api, "shop", "rr-cccc-window")?;
    assert_eq!(new.spec.deduplication.occurrence_count, 1);
    assert_eq!(new.spec.deduplication.previous_remediation_request_ref.as_deref(), Some("rr-cccc-first"));
    Ok(())
}

/// Issue 13: a CR in the cluster that breakwater did not make (no managed-by label) is never
/// changed, whether a caller of the gRPC port aims a count at it or a count finds it at flush.
#[tokio::test]
async fn a_cr_not_managed_by_breakwater_is_never_changed() -> TestResult {
    use breakwater_proto::v1::crd_writer_service_server::CrdWriterService as _;

    let api = FakeApiServer::start().await;
    let sink = Arc::new(sink(&api, 2));
    let mut theirs = incident("shop", "rr-theirs");
    if let Some(labels) = theirs.metadata.labels.as_mut() {
        labels.remove(crd::LABEL_MANAGED_BY);
    }
    sink.create(&theirs).await?;
    let before = api.get(PLURAL, "shop", "rr-theirs");

    let clock: Arc<dyn breakwater_signal::Clock> = Arc::new(breakwater_signal::ManualClock::new(T0));
    let writer = CrdWriter::new(CrdWriterConfig::default(), sink.clone()).with_clock(clock);
    let (grpc, coalescer) = writer.into_parts()?;
    let signal = pb::Signal {
        fingerprint: "c".repeat(64),
        namespace: "shop".to_owned(),
        received_time_unix_ms: T0,
        ..pb::Signal::default()
    };
    let occurrence = pb::RemediationWrite {
        kind: pb::WriteKind::Occurrence.into(),
        signal: Some(signal),
        remediation: Some(pb::RemediationRef { namespace: "shop".to_owned(), name: "rr-theirs".to_owned() }),
        first_seen_unix_ms: T0,
        last_seen_unix_ms: T0 + 1000,
        occurrence_count: 40,
        ..pb::RemediationWrite::default()
    };
    let request = tonic::Request::new(pb::WriteRemediationsRequest { writes: vec![occurrence], shared: None });
    let status = grpc.write_remediations(request).await.err().ok_or("the count was accepted")?;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    coalescer.flush().await;

    // The sink refuses on its own too, for counts that meet such a CR only at flush.
    let update = CountUpdate { occurrence_count: 40, fingerprint: "c".repeat(64), ..CountUpdate::default() };
    let refused = sink.update_counts(&at("shop", "rr-theirs"), &update).await;
    assert!(matches!(refused, Err(SinkError::Foreign { .. })), "{refused:?}");
    let refused = sink.add_occurrences(&at("shop", "rr-theirs"), 1, T0).await;
    assert!(matches!(refused, Err(SinkError::Foreign { .. })), "{refused:?}");

    assert_eq!(api.count(Verb::Patch), 0, "nothing was written");
    assert_eq!(api.get(PLURAL, "shop", "rr-theirs"), before, "the CR is unchanged");
    Ok(())
}
