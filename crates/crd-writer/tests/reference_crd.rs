//! The CRs Breakwater writes, checked against the RemediationRequest of the gateway it
//! replaces (reference spec §7.1 and §7.2). A remediation controller written for that gateway
//! reads them, so every field is the reference's, with the reference's type and constraint,
//! or it is listed in the README's table "Differences from the replaced gateway's CRD". A new
//! difference fails this test until the table says what it is and why; a row for a spec or
//! metadata path that is no longer a difference fails it too.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use breakwater_crd_writer::crd::{self, CrRef, StormType, StormWrite, Write, WriteKind};
use breakwater_crd_writer::sink::{CountUpdate, add_occurrences_to};
use breakwater_proto::v1 as pb;
use breakwater_signal::{incident_cr_name, storm_cr_name};
use serde_json::Value;

const README: &str = include_str!("../../../README.md");
const TABLE_HEADING: &str = "### Differences from the replaced gateway's CRD";
const T0: i64 = 1_731_868_032_000;

/// What the reference allows at a path.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// A string of at most (and at least) so many characters.
    Text {
        min: usize,
        max: usize,
    },
    OneOf(&'static [&'static str]),
    /// 64 lower-case hex characters.
    Fingerprint,
    /// RFC 3339.
    Time,
    /// A Go duration (`1m`, `90s`).
    Duration,
    Integer,
    Bool,
    /// Base64 of bytes.
    Bytes,
    /// A map of strings whose values are at most so many characters.
    StringMap {
        value_max: usize,
    },
    StringList,
    /// `rr-<fingerprint[:12]>-<unix seconds>` (DD-015).
    ReferenceName,
}

const ANY: Rule = Rule::Text { min: 0, max: usize::MAX };

/// The reference CR: its spec (§7.1) and the labels and annotation it sets (§7.2).
const REFERENCE: &[(&str, Rule)] = &[
    ("metadata.name", Rule::ReferenceName),
    ("metadata.labels.app.kubernetes.io/managed-by", Rule::OneOf(&["gateway-service"])),
    ("metadata.labels.app.kubernetes.io/component", Rule::OneOf(&["remediation"])),
    ("metadata.labels.kubernaut.io/signal-type", Rule::Text { min: 1, max: 63 }),
    ("metadata.labels.kubernaut.io/signal-fingerprint", Rule::Text { min: 1, max: 63 }),
    ("metadata.labels.kubernaut.io/severity", Rule::OneOf(&["critical", "warning", "info"])),
    ("metadata.labels.kubernaut.io/environment", Rule::Text { min: 1, max: 63 }),
    ("metadata.labels.kubernaut.io/priority", Rule::OneOf(&["P0", "P1", "P2", "P3"])),
    ("metadata.labels.kubernaut.io/storm", Rule::OneOf(&["true"])),
    ("metadata.labels.kubernaut.io/origin-namespace", Rule::Text { min: 0, max: 63 }),
    ("metadata.labels.kubernaut.io/cluster-scoped", Rule::OneOf(&["true"])),
    ("metadata.annotations.kubernaut.io/created-at", Rule::Time),
    ("spec.signalFingerprint", Rule::Fingerprint),
    ("spec.signalName", Rule::Text { min: 0, max: 253 }),
    ("spec.severity", Rule::OneOf(&["critical", "warning", "info"])),
    ("spec.environment", Rule::Text { min: 1, max: 63 }),
    ("spec.priority", Rule::OneOf(&["P0", "P1", "P2", "P3"])),
    ("spec.signalType", ANY),
    ("spec.signalSource", Rule::Text { min: 0, max: 63 }),
    ("spec.targetType", Rule::OneOf(&["kubernetes", "aws", "azure", "gcp", "datadog"])),
    ("spec.firingTime", Rule::Time),
    ("spec.receivedTime", Rule::Time),
    ("spec.deduplication.isDuplicate", Rule::Bool),
    ("spec.deduplication.firstSeen", Rule::Time),
    ("spec.deduplication.lastSeen", Rule::Time),
    ("spec.deduplication.occurrenceCount", Rule::Integer),
    ("spec.deduplication.previousRemediationRequestRef", ANY),
    ("spec.isStorm", Rule::Bool),
    ("spec.stormType", Rule::OneOf(&["rate", "pattern"])),
    ("spec.stormWindow", Rule::Duration),
    ("spec.stormAlertCount", Rule::Integer),
    ("spec.affectedResources", Rule::StringList),
    ("spec.signalLabels", Rule::StringMap { value_max: 63 }),
    ("spec.signalAnnotations", Rule::StringMap { value_max: 262_000 }),
    ("spec.providerData", Rule::Bytes),
    ("spec.originalPayload", Rule::Bytes),
];

/// Paths whose value is one leaf (maps and lists of the sender's own keys).
const LEAVES: &[&str] = &["spec.signalLabels", "spec.signalAnnotations", "spec.affectedResources"];

fn signal(namespace: &str) -> pb::Signal {
    pb::Signal {
        fingerprint: "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90".to_owned(),
        alert_name: "KubePodCrashLooping".to_owned(),
        severity: pb::Severity::Critical.into(),
        namespace: namespace.to_owned(),
        resource: Some(pb::Resource {
            kind: "Pod".to_owned(),
            name: "api-1".to_owned(),
            namespace: namespace.to_owned(),
        }),
        labels: HashMap::from([
            ("alertname".to_owned(), "KubePodCrashLooping".to_owned()),
            ("team".to_owned(), "platform-engineering".to_owned()),
            ("description".to_owned(), "x".repeat(200)),
        ]),
        annotations: HashMap::from([("summary".to_owned(), "api-1 restarts".to_owned())]),
        firing_time_unix_ms: T0 - 60_000,
        received_time_unix_ms: T0,
        source_type: "prometheus-alert".to_owned(),
        source: "prometheus".to_owned(),
        status: pb::SignalStatus::Firing.into(),
        original_payload: br#"{"labels":{"alertname":"KubePodCrashLooping"}}"#.to_vec(),
        environment: "production".to_owned(),
        priority: "P0".to_owned(),
        remediation_path: "aggressive".to_owned(),
    }
}

/// The CRs Breakwater writes: an incident's, a storm's, a cluster-scoped signal's (moved to
/// the fallback namespace), and later in their lives: the incident resolved, the storm with
/// alerts counted while the storm service was down.
fn written() -> Vec<Value> {
    let incident = |namespace: &str| {
        let signal = signal(namespace);
        Write {
            shared: Default::default(),
            kind: WriteKind::Create,
            target: CrRef { namespace: namespace.to_owned(), name: incident_cr_name(&signal.fingerprint, T0) },
            signal,
            first_seen: T0,
            last_seen: T0,
            occurrence_count: 1,
            identity_only: false,
            storm: None,
        }
    };
    let storm = Write {
        shared: Default::default(),
        kind: WriteKind::StormCreate,
        target: CrRef { namespace: "prod".to_owned(), name: storm_cr_name("prod", "KubePodCrashLooping", T0) },
        identity_only: false,
        storm: Some(StormWrite {
            storm_type: Some(StormType::Pattern),
            window_start: T0,
            window_secs: 60,
            alert_count: 11,
            resource_listed: true,
            resources_omitted: 1,
        }),
        ..incident("prod")
    };
    let built: Vec<_> = [incident("prod"), storm, incident("")]
        .iter()
        .map(|write| crd::build(write, T0 + 5, "kubernaut-system"))
        .collect();
    let mut resolved = built[0].clone();
    let resolution = CountUpdate { resolved_at: T0 + 60_000, ..CountUpdate::default() };
    resolution.apply_to(&mut resolved.spec, 100);
    let mut carried = built[1].clone();
    add_occurrences_to(&mut carried.spec, 2, T0 + 60_000);
    built.iter().chain([&resolved, &carried]).map(|cr| serde_json::to_value(cr).expect("a CR is JSON")).collect()
}

/// Every leaf of `value` under `prefix` (objects walked, except [`LEAVES`]), with its value.
fn leaves(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(fields) if !LEAVES.contains(&prefix) => {
            for (key, inner) in fields {
                leaves(&format!("{prefix}.{key}"), inner, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned(), value.clone());
        }
    }
}

/// The paths of the CR this test checks: the spec, the labels and annotations, the name.
fn paths_of(cr: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    leaves("spec", &cr["spec"], &mut out);
    for part in ["labels", "annotations"] {
        if let Some(fields) = cr["metadata"][part].as_object() {
            for (key, value) in fields {
                out.insert(format!("metadata.{part}.{key}"), value.clone());
            }
        }
    }
    out.insert("metadata.name".to_owned(), cr["metadata"]["name"].clone());
    out
}

fn is_time(s: &str) -> bool {
    s.parse::<jiff::Timestamp>().is_ok()
}

fn is_duration(s: &str) -> bool {
    let mut rest = s;
    let mut units = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let after = &rest[digits..];
        let unit = ["ms", "h", "m", "s"].into_iter().find(|u| after.starts_with(u));
        match (digits, unit) {
            (1.., Some(unit)) => rest = &after[unit.len()..],
            _ => return false,
        }
        units += 1;
    }
    units > 0
}

fn obeys(rule: Rule, value: &Value) -> bool {
    let text = value.as_str();
    match rule {
        Rule::Text { min, max } => text.is_some_and(|s| (min..=max).contains(&s.chars().count())),
        Rule::OneOf(allowed) => text.is_some_and(|s| allowed.contains(&s)),
        Rule::Fingerprint => {
            text.is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        }
        Rule::Time => text.is_some_and(is_time),
        Rule::Duration => text.is_some_and(is_duration),
        Rule::Integer => value.is_i64(),
        Rule::Bool => value.is_boolean(),
        Rule::Bytes => text.is_some(),
        Rule::StringMap { value_max } => value
            .as_object()
            .is_some_and(|m| m.values().all(|v| v.as_str().is_some_and(|s| s.chars().count() <= value_max))),
        Rule::StringList => value.as_array().is_some_and(|items| items.iter().all(Value::is_string)),
        Rule::ReferenceName => text.is_some_and(|s| {
            let parts: Vec<&str> = s.splitn(3, '-').collect();
            matches!(parts.as_slice(), ["rr", hex, secs]
                if hex.len() == 12 && secs.len() == 10 && secs.bytes().all(|b| b.is_ascii_digit()))
        }),
    }
}

/// The paths the README's table lists, in its first column, and whether each is a spec or
/// metadata path (checked both ways) or another kind of difference (the response body).
fn listed_differences() -> BTreeSet<String> {
    let section = README.split_once(TABLE_HEADING).map(|(_, rest)| rest).expect("the README has the table");
    let section = section.split("\n#").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|line| line.split_once('`').map(|(path, _)| path.to_owned()))
        .collect()
}

#[test]
fn every_written_field_is_the_references_or_a_listed_difference() {
    let reference: HashMap<&str, Rule> = REFERENCE.iter().copied().collect();
    let listed = listed_differences();
    let mut differences = BTreeSet::new();
    let mut unlisted = Vec::new();
    for cr in written() {
        for (path, value) in paths_of(&cr) {
            let differs = match reference.get(path.as_str()) {
                None => true,
                Some(rule) => !obeys(*rule, &value),
            };
            if differs {
                differences.insert(path.clone());
                if !listed.contains(&path) {
                    unlisted.push(format!("{path} = {value}"));
                }
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "differences from the reference CRD that the README table does not list:\n{}",
        unlisted.join("\n")
    );
    // A row for a field the reference lacks must name one Breakwater still writes, so the table
    // stays true (rows for the reference's own fields may describe their values).
    let stale: Vec<&String> = listed
        .iter()
        .filter(|path| path.starts_with("spec.") || path.starts_with("metadata.labels."))
        .filter(|path| !reference.contains_key(path.as_str()) && !differences.contains(*path))
        .collect();
    assert!(stale.is_empty(), "README rows that are no longer differences: {stale:?}");
}

#[test]
fn the_references_fields_are_all_written() {
    let written = written();
    let incident = paths_of(&written[0]);
    let storm = paths_of(&written[1]);
    let listed = listed_differences();
    for (path, _) in REFERENCE {
        let storm_only = path.starts_with("spec.storm") || *path == "spec.affectedResources";
        let where_ = if storm_only || path.ends_with("/storm") { &storm } else { &incident };
        // Written only when the CR is moved, or when there is something to say.
        let conditional = path.ends_with("origin-namespace")
            || path.ends_with("cluster-scoped")
            || path.ends_with("previousRemediationRequestRef");
        if !conditional && !listed.contains(*path) {
            assert!(where_.contains_key(*path), "{path} is not written");
        }
    }
    let moved = paths_of(&written[2]);
    assert_eq!(moved["metadata.labels.kubernaut.io/cluster-scoped"], "true");
}

#[test]
fn the_storm_window_is_a_duration_as_the_reference_means_it() {
    let storm = paths_of(&written()[1]);
    assert_eq!(storm["spec.stormWindow"], "1m");
    assert!(is_duration("1m30s") && is_duration("300ms") && !is_duration("2024-11-17T18:27:12Z") && !is_duration(""));
}
