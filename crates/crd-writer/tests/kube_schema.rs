//! The Kubernetes sink against the fake API server with the CRD's own schema
//! (`deploy/crd.yaml`) applied, as a real API server applies it: every CR and count update
//! Breakwater writes must pass it, and a CR that breaks it is refused for good.

use std::collections::HashMap;

use breakwater_crd_writer::crd::{self, CrRef, StormType, StormWrite, Write, WriteKind};
use breakwater_crd_writer::sink::{CountUpdate, CreateOutcome, UpdateOutcome};
use breakwater_crd_writer::{KubeSink, RemediationRequest, RemediationSink, RetryConfig, SinkError};
use breakwater_proto::v1 as pb;
use breakwater_testkit::{FakeApiServer, Verb};
use kube::api::{Patch, PatchParams, ValidationDirective};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PLURAL: &str = "remediationrequests";
const T0: i64 = 1_700_000_000_000;
const CRD_YAML: &str = include_str!("../../../deploy/crd.yaml");

/// `spec.versions[0].schema.openAPIV3Schema` of the deployed CRD.
fn deployed_schema() -> Result<Value, Box<dyn std::error::Error>> {
    let crd: Value = serde_saphyr::from_str(CRD_YAML)?;
    let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    if !schema.is_object() {
        return Err("deploy/crd.yaml has no spec.versions[0].schema.openAPIV3Schema".into());
    }
    Ok(schema)
}

async fn server() -> Result<FakeApiServer, Box<dyn std::error::Error>> {
    let api = FakeApiServer::start().await;
    api.set_schema(PLURAL, deployed_schema()?);
    Ok(api)
}

fn sink(api: &FakeApiServer) -> KubeSink {
    let retry = RetryConfig { max_attempts: 3, initial_backoff_ms: 10, max_backoff_ms: 40 };
    KubeSink::new(api.client_without_retry(), retry, "kubernaut-system")
}

fn signal(namespace: &str, fingerprint: &str) -> pb::Signal {
    pb::Signal {
        fingerprint: fingerprint.to_owned(),
        alert_name: "KubeDeploymentReplicasMismatch".to_owned(),
        severity: pb::Severity::Critical.into(),
        namespace: namespace.to_owned(),
        resource: Some(pb::Resource {
            kind: "Deployment".to_owned(),
            name: "web".to_owned(),
            namespace: namespace.to_owned(),
        }),
        labels: HashMap::from([("environment".to_owned(), "production".to_owned())]),
        annotations: HashMap::from([("summary".to_owned(), "replicas mismatch".to_owned())]),
        received_time_unix_ms: T0,
        firing_time_unix_ms: T0 - 5000,
        source_type: "prometheus-alert".to_owned(),
        source: "prometheus".to_owned(),
        original_payload: br#"{"alerts":[]}"#.to_vec(),
        ..pb::Signal::default()
    }
}

fn incident(namespace: &str, name: &str, fingerprint: &str) -> RemediationRequest {
    let write = Write {
        shared: Default::default(),
        kind: WriteKind::Create,
        target: CrRef { namespace: namespace.to_owned(), name: name.to_owned() },
        signal: signal(namespace, fingerprint),
        first_seen: T0,
        last_seen: T0,
        occurrence_count: 3,
        identity_only: false,
        storm: None,
    };
    crd::build(&write, T0 + 10, "kubernaut-system")
}

fn storm(namespace: &str, name: &str) -> RemediationRequest {
    let write = Write {
        shared: Default::default(),
        kind: WriteKind::StormCreate,
        target: CrRef { namespace: namespace.to_owned(), name: name.to_owned() },
        signal: signal(namespace, &"e".repeat(64)),
        first_seen: 0,
        last_seen: T0,
        occurrence_count: 1,
        identity_only: false,
        storm: Some(StormWrite {
            storm_type: Some(StormType::Rate),
            window_start: T0 - 60_000,
            window_secs: 60,
            alert_count: 11,
            resource_listed: true,
            resources_omitted: 2,
        }),
    };
    crd::build(&write, T0 + 10, "kubernaut-system")
}

fn at(namespace: &str, name: &str) -> CrRef {
    CrRef { namespace: namespace.to_owned(), name: name.to_owned() }
}

fn stored(api: &FakeApiServer, namespace: &str, name: &str) -> Result<Value, Box<dyn std::error::Error>> {
    Ok(api.get(PLURAL, namespace, name).ok_or_else(|| format!("{namespace}/{name} not stored"))?)
}

/// What the sink sent survives pruning and defaulting unchanged: the schema knows every field.
fn assert_spec_kept(api: &FakeApiServer, rr: &RemediationRequest) -> TestResult {
    let namespace = rr.metadata.namespace.as_deref().unwrap_or_default();
    let name = rr.metadata.name.as_deref().unwrap_or_default();
    assert_eq!(stored(api, namespace, name)?["spec"], serde_json::to_value(&rr.spec)?, "{namespace}/{name}");
    Ok(())
}

#[test]
fn the_deployed_crd_is_what_the_crate_generates() -> TestResult {
    // The schema the tests apply is only meaningful if it is the one that gets deployed.
    let generated: Value = serde_saphyr::from_str(&crd::crd_yaml()?)?;
    let deployed: Value = serde_saphyr::from_str(CRD_YAML)?;
    assert_eq!(generated, deployed);
    Ok(())
}

#[tokio::test]
async fn built_incident_and_storm_crs_pass_the_schema_unpruned() -> TestResult {
    let api = server().await?;
    let sink = sink(&api);
    let rr = incident("shop", "rr-1", &"c".repeat(64));
    assert_eq!(sink.create(&rr).await?.outcome, CreateOutcome::Created);
    assert_spec_kept(&api, &rr)?;
    let rr = storm("shop", "storm-1");
    assert_eq!(sink.create(&rr).await?.outcome, CreateOutcome::Created);
    assert_spec_kept(&api, &rr)?;
    // A cluster-scoped signal lands in the fallback namespace, with its origin labels.
    let rr = incident("", "rr-cluster", &"d".repeat(64));
    let created = sink.create(&rr).await?;
    assert_eq!(created.namespace, "kubernaut-system");
    assert!(api.get(PLURAL, "kubernaut-system", "rr-cluster").is_some());
    assert!(api.request_log().iter().all(|(_, _, code)| *code == 201), "{:?}", api.request_log());
    Ok(())
}

#[tokio::test]
async fn count_updates_tally_and_resolved_at_pass_the_schema() -> TestResult {
    let api = server().await?;
    let sink = sink(&api);
    let rr = incident("shop", "rr-1", &"c".repeat(64));
    sink.create(&rr).await?;
    let target = at("shop", "rr-1");

    let update = CountUpdate { occurrence_count: 5, window_start: T0, last_seen: T0 + 5000, ..CountUpdate::default() };
    assert_eq!(sink.update_counts(&target, &update).await?, UpdateOutcome::Updated);
    // A newer window moves the current one back in the tally.
    let update = CountUpdate {
        occurrence_count: 2,
        window_start: T0 + 600_000,
        last_seen: T0 + 601_000,
        ..CountUpdate::default()
    };
    assert_eq!(sink.update_counts(&target, &update).await?, UpdateOutcome::Updated);
    let update = CountUpdate { resolved_at: T0 + 700_000, ..CountUpdate::default() };
    assert_eq!(sink.update_counts(&target, &update).await?, UpdateOutcome::Updated);
    assert_eq!(sink.add_occurrences(&target, 4, T0 + 650_000).await?, UpdateOutcome::Updated);

    let object = stored(&api, "shop", "rr-1")?;
    let dedup = &object["spec"]["deduplication"];
    assert_eq!(dedup["occurrenceCount"], json!(11), "{dedup}");
    assert_eq!(dedup["tally"]["windowStartMs"], json!(T0 + 600_000), "{dedup}");
    assert_eq!(
        (dedup["tally"]["windowCount"].clone(), dedup["tally"]["previousWindowCount"].clone()),
        (json!(2), json!(5))
    );
    assert_eq!(dedup["resolvedAt"], json!("2023-11-14T22:25:00Z"), "{dedup}");

    let target = at("shop", "storm-1");
    sink.create(&storm("shop", "storm-1")).await?;
    let update = CountUpdate {
        storm_alert_count: 14,
        affected_resources: vec!["shop:Pod:b".to_owned()],
        affected_resources_omitted: 4,
        last_seen: T0 + 9000,
        ..CountUpdate::default()
    };
    assert_eq!(sink.update_counts(&target, &update).await?, UpdateOutcome::Updated);
    let spec = &stored(&api, "shop", "storm-1")?["spec"];
    assert_eq!(spec["stormAlertCount"], json!(14), "{spec}");

    let refused: Vec<_> = api.request_log().into_iter().filter(|(_, _, code)| *code >= 400).collect();
    assert!(refused.is_empty(), "writes refused by the schema: {refused:?}");
    Ok(())
}

#[tokio::test]
async fn an_invalid_fingerprint_is_rejected_for_good() -> TestResult {
    for fingerprint in ["x", &"C".repeat(64), &"c".repeat(65)] {
        let api = server().await?;
        let sink = sink(&api);
        let err = sink.create(&incident("shop", "rr-1", fingerprint)).await.err().ok_or("created")?;
        assert!(matches!(err, SinkError::Rejected { code: 422, .. }), "{fingerprint}: {err:?}");
        assert!(err.is_permanent(), "{err:?}");
        assert_eq!(api.count(Verb::Create), 1, "a 422 is not retried");
        assert!(api.objects(PLURAL).is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn an_invalid_enum_value_is_refused_with_the_api_servers_causes() -> TestResult {
    let api = server().await?;
    let sink = sink(&api);
    sink.create(&incident("shop", "rr-1", &"c".repeat(64))).await?;
    let rrs: kube::Api<RemediationRequest> = kube::Api::namespaced(api.client_without_retry(), "shop");
    let patch = Patch::Merge(json!({ "spec": { "severity": "fatal", "priority": "P9" } }));
    let err = rrs.patch("rr-1", &PatchParams::default(), &patch).await.err().ok_or("patched")?;
    let kube::Error::Api(status) = err else { return Err(format!("not an API error: {err:?}").into()) };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    let causes: Vec<(String, String)> = status
        .details
        .map(|details| details.causes)
        .unwrap_or_default()
        .into_iter()
        .map(|cause| (cause.field, cause.message))
        .collect();
    assert_eq!(
        causes,
        [
            (
                "spec.priority".to_owned(),
                r#"Unsupported value: "P9": supported values: "P0", "P1", "P2", "P3""#.to_owned()
            ),
            (
                "spec.severity".to_owned(),
                r#"Unsupported value: "fatal": supported values: "critical", "warning", "info""#.to_owned()
            ),
        ]
    );
    // The stored CR is untouched, and strict validation names a field the schema lacks.
    assert_eq!(stored(&api, "shop", "rr-1")?["spec"]["severity"], "critical");
    let strict = PatchParams { field_validation: Some(ValidationDirective::Strict), ..PatchParams::default() };
    let patch = Patch::Merge(json!({ "spec": { "deduplication": { "count": 1 } } }));
    let err = rrs.patch("rr-1", &strict, &patch).await.err().ok_or("patched")?;
    let kube::Error::Api(status) = err else { return Err(format!("not an API error: {err:?}").into()) };
    assert_eq!(status.code, 400);
    assert!(status.message.ends_with(r#"unknown field "spec.deduplication.count""#), "{}", status.message);
    Ok(())
}
