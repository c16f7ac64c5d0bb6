//! The Kubernetes sink against the testkit's fake API server, through a real `kube::Client`
//! (built without kube's own retry, as `sink_from_config` builds it).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use breakwater_crd_writer::crd::{self, CrRef, Write, WriteKind};
use breakwater_crd_writer::sink::{CountUpdate, CreateOutcome, UpdateOutcome};
use breakwater_crd_writer::{KubeSink, RemediationRequest, RemediationSink, RetryConfig, SinkError};
use breakwater_proto::v1 as pb;
use breakwater_testkit::{FakeApiServer, Fault, Verb, eventually};

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
    let write = Write {
        kind: WriteKind::Create,
        target: CrRef { namespace: namespace.to_owned(), name: name.to_owned() },
        signal: pb::Signal {
            fingerprint: "c".repeat(64),
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
        storm: None,
    };
    crd::build(&write, T0, "kubernaut-system")
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

#[tokio::test]
async fn a_429_is_retried_after_the_time_it_asks_for() -> TestResult {
    let api = FakeApiServer::start().await;
    let sink = sink(&api, 5);
    api.inject(Fault::Status { code: 429, retry_after_secs: Some(1) }, 1);
    let started = Instant::now();
    let created = sink.create(&incident("shop", "rr-1")).await?;
    assert_eq!(created.outcome, CreateOutcome::Created);
    assert!(started.elapsed() >= Duration::from_secs(1), "waited {:?}, not retryAfterSeconds", started.elapsed());
    assert_eq!(api.count(Verb::Create), 2);
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
