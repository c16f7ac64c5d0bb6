use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;

use super::CrIndex;
use crate::crd::{self, CrRef, LABEL_FINGERPRINT, LABEL_MANAGED_BY, MANAGED_BY, RemediationRequest, Write, WriteKind};
use crate::sink::{CrPhase, LatestCr};

const FP: &str = "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd";

fn cr(name: &str, version: u64, phase: Option<&str>) -> RemediationRequest {
    let signal = breakwater_proto::v1::Signal {
        fingerprint: FP.to_owned(),
        alert_name: "A".to_owned(),
        namespace: "ops".to_owned(),
        ..Default::default()
    };
    let write = Write {
        shared: Default::default(),
        kind: WriteKind::Create,
        target: CrRef { namespace: "ops".to_owned(), name: name.to_owned() },
        signal,
        first_seen: 1_000,
        last_seen: 1_000,
        occurrence_count: 1,
        identity_only: false,
        storm: None,
    };
    let mut rr = crd::build(&write, 1_000, "kubernaut-system");
    rr.metadata.resource_version = Some(version.to_string());
    rr.status =
        phase.map(|p| crd::RemediationRequestStatus { overall_phase: Some(p.to_owned()), ..Default::default() });
    rr
}

fn at(name: &str) -> CrRef {
    CrRef { namespace: "ops".to_owned(), name: name.to_owned() }
}

#[test]
fn it_answers_only_once_the_watch_listed_everything() {
    let index = CrIndex::default();
    index.apply(Event::Init);
    index.apply(Event::InitApply(cr("rr-a", 1, None)));
    assert_eq!(index.latest("ops", FP), None, "not synced: ask the API server");
    index.apply(Event::InitDone);
    assert_eq!(index.latest("ops", FP), Some(Some(LatestCr { at: at("rr-a"), phase: CrPhase::Open })));
    assert_eq!(index.latest("ops", &"0".repeat(64)), Some(None), "synced: no CR means none");
    index.unsync();
    assert_eq!(index.latest("ops", FP), None);
}

#[test]
fn phases_follow_the_watch_and_older_versions_do_not_win() {
    let index = CrIndex::default();
    index.apply(Event::Init);
    index.apply(Event::InitDone);
    index.upsert(&cr("rr-a", 5, Some("Completed")));
    // A late event of an older version (our own write was recorded first).
    index.apply(Event::Apply(cr("rr-a", 4, None)));
    let latest = index.latest("ops", FP).flatten().map(|l| l.phase);
    assert!(matches!(latest, Some(CrPhase::Finished { .. })), "{latest:?}");
    index.apply(Event::Delete(cr("rr-a", 6, Some("Completed"))));
    assert_eq!(index.latest("ops", FP), Some(None));
}

#[test]
fn a_relist_replaces_what_was_known() {
    let index = CrIndex::default();
    index.apply(Event::Init);
    index.apply(Event::InitApply(cr("rr-gone", 1, None)));
    index.apply(Event::InitDone);
    index.apply(Event::Init);
    index.apply(Event::InitApply(cr("rr-new", 2, None)));
    index.apply(Event::InitDone);
    assert_eq!(index.latest("ops", FP).flatten().map(|l| l.at), Some(at("rr-new")));
}

#[test]
fn only_incident_crs_are_indexed() {
    let index = CrIndex::default();
    index.apply(Event::Init);
    index.apply(Event::InitDone);
    let mut foreign = cr("rr-theirs", 1, None);
    if let Some(labels) = foreign.metadata.labels.as_mut() {
        labels.insert(LABEL_MANAGED_BY.to_owned(), "someone".to_owned());
    }
    index.upsert(&foreign);
    let unlabelled = RemediationRequest { metadata: ObjectMeta::default(), ..cr("rr-x", 1, None) };
    index.upsert(&unlabelled);
    assert_eq!(index.latest("ops", FP), Some(None));
    let ours = cr("rr-ours", 1, None);
    assert_eq!(
        ours.metadata.labels.as_ref().and_then(|l| l.get(LABEL_MANAGED_BY)).map(String::as_str),
        Some(MANAGED_BY)
    );
    assert!(ours.metadata.labels.as_ref().is_some_and(|l| l.contains_key(LABEL_FINGERPRINT)));
    index.upsert(&ours);
    assert_eq!(index.latest("ops", FP).flatten().map(|l| l.at), Some(at("rr-ours")));
}
