use std::collections::HashMap;
use std::path::PathBuf;

use super::*;

const FP: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const NOW: UnixMillis = 1_731_868_032_000;

fn signal() -> pb::Signal {
    pb::Signal {
        fingerprint: FP.to_owned(),
        alert_name: "HighMemoryUsage".to_owned(),
        severity: pb::Severity::Critical.into(),
        namespace: "prod-payments".to_owned(),
        resource: Some(pb::Resource {
            kind: "Pod".to_owned(),
            name: "api-7d9f".to_owned(),
            namespace: "prod-payments".to_owned(),
        }),
        labels: HashMap::from([
            ("alertname".to_owned(), "HighMemoryUsage".to_owned()),
            ("environment".to_owned(), "production".to_owned()),
        ]),
        annotations: HashMap::from([("summary".to_owned(), "memory above 90%".to_owned())]),
        firing_time_unix_ms: NOW - 60_000,
        received_time_unix_ms: NOW - 1000,
        source_type: "prometheus-alert".to_owned(),
        source: "prometheus".to_owned(),
        status: pb::SignalStatus::Firing.into(),
        original_payload: br#"{"labels":{"alertname":"HighMemoryUsage"}}"#.to_vec(),
        ..pb::Signal::default()
    }
}

fn create(signal: pb::Signal) -> Write {
    Write {
        shared: Default::default(),
        kind: WriteKind::Create,
        target: CrRef { namespace: "prod-payments".to_owned(), name: format!("rr-{}-1", &FP[..16]) },
        signal,
        first_seen: NOW - 1000,
        last_seen: NOW - 1000,
        occurrence_count: 1,
        identity_only: false,
        storm: None,
    }
}

fn storm_create(signal: pb::Signal) -> Write {
    Write {
        shared: Default::default(),
        kind: WriteKind::StormCreate,
        target: CrRef { namespace: "prod-payments".to_owned(), name: "storm-0123456789abcdef-5".to_owned() },
        signal,
        first_seen: 0,
        last_seen: 0,
        occurrence_count: 0,
        identity_only: false,
        storm: Some(StormWrite {
            storm_type: Some(StormType::Pattern),
            window_start: NOW - 30_000,
            window_secs: 60,
            alert_count: 11,
            resource_listed: true,
            resources_omitted: 2,
        }),
    }
}

fn label<'a>(rr: &'a RemediationRequest, key: &str) -> Option<&'a str> {
    rr.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

#[test]
fn priority_follows_the_reference_table() {
    use Priority::*;
    use Severity::*;
    let table = [
        (Critical, "production", P0),
        (Critical, "staging", P1),
        (Warning, "production", P1),
        (Critical, "development", P2),
        (Warning, "staging", P2),
        (Warning, "development", P2),
        (Info, "production", P3),
        (Info, "unknown", P3),
        // Literal comparison: `prod` is not `production`.
        (Critical, "prod", P2),
        (Critical, "PRODUCTION", P2),
        (Warning, "unknown", P2),
        (Critical, "canary", P2),
    ];
    for (severity, env, want) in table {
        assert_eq!(priority(severity, env), want, "{severity:?} + {env}");
    }
}

#[test]
fn environment_is_the_label_as_is_or_unknown() {
    let labels = |v: &str| HashMap::from([("environment".to_owned(), v.to_owned())]);
    assert_eq!(environment(Layered::own(&labels("PRODUCTION"))), "PRODUCTION");
    assert_eq!(environment(Layered::own(&labels("eu-west canary"))), "eu-west canary");
    assert_eq!(environment(Layered::own(&labels(""))), "unknown");
    assert_eq!(environment(Layered::own(&HashMap::new())), "unknown");
    assert_eq!(environment(Layered::own(&labels(&"x".repeat(100)))).len(), 63);
}

#[test]
fn label_values_are_sanitised() {
    assert_eq!(label_value("prometheus-alert"), "prometheus-alert");
    assert_eq!(label_value("eu west/1"), "eu-west-1");
    assert_eq!(label_value("-_.edge._-"), "edge");
    assert_eq!(label_value("ünïcode"), "n-code");
    assert_eq!(label_value(""), "");
    assert_eq!(label_value("---"), "");
    let long = format!("{}-{}", "a".repeat(62), "b".repeat(10));
    let cut = label_value(&long);
    assert_eq!(cut, "a".repeat(62), "cut at 63, then the trailing '-' trimmed");
    for raw in ["a.b_c-d", "x".repeat(200).as_str(), "weird!!value??", " padded ", "é"] {
        let v = label_value(raw);
        assert!(v.len() <= 63, "{v}");
        assert!(v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{v}");
        if let (Some(first), Some(last)) = (v.chars().next(), v.chars().last()) {
            assert!(first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric(), "{v}");
        }
    }
}

#[test]
fn dns1123_labels() {
    for ok in ["a", "rr-0123456789abcdef-1731868032000", "kubernaut-system", &"a".repeat(63)] {
        assert!(is_dns1123_label(ok), "{ok}");
    }
    for bad in ["", "-a", "a-", "A", "a.b", "../etc", "a/b", "a_b", &"a".repeat(64), "é"] {
        assert!(!is_dns1123_label(bad), "{bad}");
    }
}

#[test]
fn builds_an_incident_cr() {
    let rr = build(&create(signal()), NOW, "kubernaut-system");
    assert_eq!(rr.metadata.name.as_deref(), Some(format!("rr-{}-1", &FP[..16]).as_str()));
    assert_eq!(rr.metadata.namespace.as_deref(), Some("prod-payments"));
    assert_eq!(label(&rr, LABEL_MANAGED_BY), Some("breakwater"));
    assert_eq!(label(&rr, LABEL_COMPONENT), Some("remediation"));
    assert_eq!(label(&rr, LABEL_SIGNAL_TYPE), Some("prometheus-alert"));
    assert_eq!(label(&rr, LABEL_FINGERPRINT), Some(&FP[..63]));
    assert_eq!(label(&rr, LABEL_SEVERITY), Some("critical"));
    assert_eq!(label(&rr, LABEL_ENVIRONMENT), Some("production"));
    assert_eq!(label(&rr, LABEL_PRIORITY), Some("P0"));
    assert_eq!(label(&rr, LABEL_STORM), None);
    assert_eq!(label(&rr, LABEL_ORIGIN_NAMESPACE), None);
    let created_at = rr.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_CREATED_AT));
    assert_eq!(created_at.map(String::as_str), Some("2024-11-17T18:27:12Z"));

    let spec = &rr.spec;
    assert_eq!(spec.signal_fingerprint, FP);
    assert_eq!(spec.signal_name, "HighMemoryUsage");
    assert_eq!(spec.severity, Severity::Critical);
    assert_eq!(spec.environment, "production");
    assert_eq!(spec.priority, Priority::P0);
    assert_eq!(spec.signal_type, "prometheus-alert");
    assert_eq!(spec.signal_source, "prometheus");
    assert_eq!(spec.target_type, TargetType::Kubernetes);
    assert_eq!(spec.firing_time, time(NOW - 60_000));
    assert_eq!(spec.received_time, time(NOW - 1000));
    assert!(!spec.deduplication.is_duplicate);
    assert_eq!(spec.deduplication.first_seen, time(NOW - 1000));
    assert_eq!(spec.deduplication.occurrence_count, 1);
    assert!(!spec.is_storm);
    assert_eq!(spec.storm_type, None);
    assert!(spec.affected_resources.is_empty());
    assert_eq!(spec.signal_labels.get("environment").map(String::as_str), Some("production"));
    assert_eq!(spec.original_payload.as_ref().map(|b| b.0.as_slice()), Some(signal().original_payload.as_slice()));
}

#[test]
fn a_cr_lists_its_batchs_shared_labels_and_annotations_under_its_own() {
    let shared = pb::SharedValues {
        labels: HashMap::from([("team".to_owned(), "db".to_owned()), ("environment".to_owned(), "staging".to_owned())]),
        annotations: HashMap::from([
            ("runbook".to_owned(), "https://runbooks/db".to_owned()),
            ("summary".to_owned(), "shared summary".to_owned()),
        ]),
    };
    let mut signal = signal();
    signal.environment.clear();
    let write = Write { shared: Arc::new(shared), ..create(signal) };
    let rr = build(&write, NOW, "breakwater");
    let labels = &rr.spec.signal_labels;
    assert_eq!(labels.get("team").map(String::as_str), Some("db"));
    // The signal's own value wins, for the CR's labels and for what is derived from them.
    assert_eq!(labels.get("environment").map(String::as_str), Some("production"));
    assert_eq!(rr.spec.environment, "production");
    let annotations = &rr.spec.signal_annotations;
    assert_eq!(annotations.get("runbook").map(String::as_str), Some("https://runbooks/db"));
    assert_eq!(annotations.get("summary").map(String::as_str), Some("memory above 90%"));
    let provider: serde_json::Value = serde_json::from_slice(&rr.spec.provider_data.as_ref().unwrap().0).unwrap();
    assert_eq!(provider["labels"]["team"], "db");
}

#[test]
fn payloads_are_base64_in_json() -> Result<(), serde_json::Error> {
    let rr = build(&create(signal()), NOW, "kubernaut-system");
    let json = serde_json::to_value(&rr)?;
    // base64 of the original payload, as Go marshals []byte.
    assert_eq!(json["spec"]["originalPayload"], "eyJsYWJlbHMiOnsiYWxlcnRuYW1lIjoiSGlnaE1lbW9yeVVzYWdlIn19");
    assert_eq!(json["apiVersion"], "remediation.kubernaut.io/v1alpha1");
    assert_eq!(json["kind"], "RemediationRequest");
    assert_eq!(json["spec"]["deduplication"]["occurrenceCount"], 1);
    assert_eq!(json["spec"]["firingTime"], "2024-11-17T18:26:12Z");

    let provider = rr.spec.provider_data.as_ref().map(|b| b.0.clone()).unwrap_or_default();
    let provider: serde_json::Value = serde_json::from_slice(&provider)?;
    assert_eq!(
        provider,
        serde_json::json!({
            "namespace": "prod-payments",
            "resource": {"kind": "Pod", "name": "api-7d9f", "namespace": "prod-payments"},
            "labels": {"alertname": "HighMemoryUsage", "environment": "production"},
        })
    );

    let back: RemediationRequest = serde_json::from_value(json)?;
    assert_eq!(back, rr);
    Ok(())
}

#[test]
fn long_values_are_cut() {
    let mut s = signal();
    s.labels.insert("description".to_owned(), "é".repeat(100));
    s.labels.insert("environment".to_owned(), "staging/eu west".to_owned());
    // 262000 bytes fall inside a 2-byte character: the cut moves back to its start.
    s.annotations.insert("runbook".to_owned(), format!("a{}", "é".repeat(200_000)));
    s.alert_name = "n".repeat(300);
    s.source = "s".repeat(100);
    s.source_type = "Kubernetes Event!".to_owned();
    let rr = build(&create(s), NOW, "kubernaut-system");
    let spec = &rr.spec;
    assert_eq!(spec.signal_labels["description"].chars().count(), 63);
    // Cut to 262000 bytes (the reference's per-value cut), then further to fit the CR cap,
    // each time at a character boundary.
    let runbook = &spec.signal_annotations["runbook"];
    assert!((200_000..261_999).contains(&runbook.len()), "runbook is {} bytes", runbook.len());
    assert!(runbook.ends_with('é'));
    assert!(json_size(&rr) <= CR_MAX_BYTES);
    assert_eq!(spec.signal_name.len(), 253);
    assert_eq!(spec.signal_source.len(), 63);
    assert_eq!(spec.environment, "staging/eu west");
    assert_eq!(spec.priority, Priority::P2);
    assert_eq!(label(&rr, LABEL_ENVIRONMENT), Some("staging-eu-west"));
    assert_eq!(label(&rr, LABEL_SIGNAL_TYPE), Some("Kubernetes-Event"));
}

#[test]
fn missing_times_and_severity_get_defaults() {
    let mut s = signal();
    s.firing_time_unix_ms = 0;
    s.received_time_unix_ms = 0;
    s.severity = pb::Severity::Unspecified.into();
    s.labels.clear();
    let mut write = create(s);
    write.first_seen = 0;
    write.last_seen = 0;
    write.occurrence_count = 0;
    let rr = build(&write, NOW, "kubernaut-system");
    assert_eq!(rr.spec.received_time, time(NOW));
    assert_eq!(rr.spec.firing_time, time(NOW));
    assert_eq!(rr.spec.deduplication.first_seen, time(NOW));
    assert_eq!(rr.spec.deduplication.occurrence_count, 1);
    assert_eq!(rr.spec.severity, Severity::Warning);
    assert_eq!(rr.spec.environment, "unknown");
    assert_eq!(rr.spec.priority, Priority::P2);
}

#[test]
fn builds_a_storm_cr() {
    let rr = build(&storm_create(signal()), NOW, "kubernaut-system");
    assert_eq!(label(&rr, LABEL_STORM), Some("true"));
    let spec = &rr.spec;
    assert!(spec.is_storm);
    assert_eq!(spec.signal_fingerprint, FP);
    assert_eq!(spec.signal_name, "HighMemoryUsage");
    assert_eq!(spec.storm_type, Some(StormType::Pattern));
    assert_eq!(spec.storm_window.as_deref(), Some("1m"), "a duration, as in the reference CRD");
    assert_eq!(spec.storm_window_start.as_ref().map(|t| t.0.to_string()).as_deref(), Some("2024-11-17T18:26:42Z"));
    assert_eq!(spec.storm_alert_count, Some(11));
    assert_eq!(spec.affected_resources, vec!["prod-payments:Pod:api-7d9f".to_owned()]);
    assert_eq!(spec.affected_resources_omitted, Some(2));
    assert_eq!(spec.deduplication.first_seen, time(NOW - 30_000));
}

#[test]
fn cluster_scoped_signals_land_in_the_fallback_namespace() {
    let mut s = signal();
    s.namespace.clear();
    s.resource = Some(pb::Resource { kind: "Node".to_owned(), name: "worker-1".to_owned(), namespace: String::new() });
    let mut write = storm_create(s);
    write.target.namespace.clear();
    let rr = build(&write, NOW, "kubernaut-system");
    assert_eq!(rr.metadata.namespace.as_deref(), Some("kubernaut-system"));
    assert_eq!(label(&rr, LABEL_ORIGIN_NAMESPACE), Some(""));
    assert_eq!(label(&rr, LABEL_CLUSTER_SCOPED), Some("true"));
    assert_eq!(rr.spec.affected_resources, vec!["Node:worker-1".to_owned()]);
}

#[test]
fn relocate_keeps_the_origin() {
    let mut rr = build(&create(signal()), NOW, "kubernaut-system");
    relocate(&mut rr, "kubernaut-system");
    assert_eq!(rr.metadata.namespace.as_deref(), Some("kubernaut-system"));
    assert_eq!(label(&rr, LABEL_ORIGIN_NAMESPACE), Some("prod-payments"));
    assert_eq!(label(&rr, LABEL_CLUSTER_SCOPED), Some("true"));
}

/// Both committed copies: `deploy/crd.yaml`, and the kustomize base's (kustomize loads files
/// only at or below a kustomization's directory, so the base cannot point at the other).
#[test]
fn committed_crd_matches_the_type() -> Result<(), Box<dyn std::error::Error>> {
    let generated = crd_yaml()?;
    for file in ["deploy/crd.yaml", "deploy/kustomize/base/crd.yaml"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            let line = committed.lines().zip(generated.lines()).position(|(a, b)| a != b);
            return Err(format!(
                "{file} differs from RemediationRequest::crd() (first difference at line {}); \
                 run `breakwater crd > {file}` (or `cargo run -p breakwater-crd-writer --example crdgen > {file}`)",
                line.map_or_else(|| committed.lines().count().min(generated.lines().count()) + 1, |l| l + 1),
            )
            .into());
        }
    }
    Ok(())
}

#[test]
fn crd_yaml_parses_back_as_a_crd() -> Result<(), Box<dyn std::error::Error>> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&crd_yaml()?)?;
    assert_eq!(crd.metadata.name.as_deref(), Some("remediationrequests.remediation.kubernaut.io"));
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
    let schema = serde_json::to_value(&version.schema)?;
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(spec["signalFingerprint"]["pattern"], "^[a-f0-9]{64}$");
    assert_eq!(spec["originalPayload"]["format"], "byte");
    assert_eq!(spec["affectedResourcesOmitted"]["type"], "integer");
    Ok(())
}

fn json_size(rr: &RemediationRequest) -> usize {
    serde_json::to_vec(rr).unwrap().len()
}

#[test]
fn a_cr_from_a_huge_label_stays_under_the_cap_and_says_what_was_cut() {
    // As the edge passes it on: a 500 KB label, in the labels and in the raw alert.
    let huge = "x".repeat(500_000);
    let mut s = signal();
    s.labels.insert("blob".to_owned(), huge.clone());
    s.original_payload = format!(r#"{{"labels":{{"blob":"{huge}"}}}}"#).into_bytes();
    let rr = build(&create(s), NOW, "kubernaut-system");
    let size = json_size(&rr);
    assert!(size <= CR_MAX_BYTES, "CR is {size} bytes, over {CR_MAX_BYTES}");
    let marker = rr.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_TRUNCATED)).cloned();
    assert_eq!(marker.as_deref(), Some("providerData,originalPayload"));
    assert_eq!(rr.spec.signal_labels.get("blob").map(String::len), Some(LABEL_VALUE_MAX));
    assert_eq!(rr.spec.signal_annotations.get("summary").map(String::as_str), Some("memory above 90%"));
}

#[test]
fn huge_annotations_are_cut_to_one_length_that_fits() {
    let mut s = signal();
    for i in 0..12 {
        s.annotations.insert(format!("a{i}"), "y".repeat(200_000));
    }
    s.annotations.insert(ANNOTATION_TRUNCATED.to_owned(), "annotations.a0".to_owned());
    let rr = build(&create(s), NOW, "kubernaut-system");
    assert!(json_size(&rr) <= CR_MAX_BYTES);
    let a0 = rr.spec.signal_annotations.get("a0").map_or(0, String::len);
    assert!(a0 > 10_000, "the cut keeps as much as fits, got {a0} bytes");
    assert_eq!(rr.spec.signal_annotations.get("summary").map(String::as_str), Some("memory above 90%"));
    let marker = rr.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_TRUNCATED)).cloned();
    assert_eq!(marker.as_deref(), Some("annotations.a0,signalAnnotations"));
}

#[test]
fn a_cr_within_the_cap_is_not_marked() {
    let rr = build(&create(signal()), NOW, "kubernaut-system");
    assert!(rr.metadata.annotations.as_ref().is_some_and(|a| !a.contains_key(ANNOTATION_TRUNCATED)));
}

#[test]
fn a_storm_window_is_written_as_a_duration() {
    assert_eq!(duration(0), None);
    assert_eq!(duration(60).as_deref(), Some("1m"));
    assert_eq!(duration(90).as_deref(), Some("1m30s"));
    assert_eq!(duration(7200).as_deref(), Some("2h"));
    assert_eq!(duration(3661).as_deref(), Some("1h1m1s"));
}
