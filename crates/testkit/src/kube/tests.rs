use std::time::{Duration, Instant};

use ::kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use ::kube::core::Status;
use ::kube::{CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{FakeApiServer, Fault, Verb};

const GROUP: &str = "remediation.kubernaut.io";
const PLURAL: &str = "remediationrequests";

fn resource() -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: "v1alpha1".into(),
        api_version: format!("{GROUP}/v1alpha1"),
        kind: "RemediationRequest".into(),
        plural: PLURAL.into(),
    }
}

fn api(fake: &FakeApiServer, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(fake.client(), namespace, &resource())
}

fn request(name: &str, labels: &[(&str, &str)]) -> DynamicObject {
    let mut object = DynamicObject::new(name, &resource()).data(json!({
        "spec": { "signalFingerprint": format!("fp-{name}"), "severity": "critical" },
        "status": { "phase": "ignored-on-create" },
    }));
    object.metadata.labels = Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
    object
}

/// The `Status` inside a `kube::Error::Api`, or a panic naming what came back instead.
fn api_status<T: std::fmt::Debug>(result: Result<T, ::kube::Error>) -> Status {
    match result {
        Err(::kube::Error::Api(status)) => *status,
        other => panic!("expected kube::Error::Api, got {other:?}"),
    }
}

#[tokio::test]
async fn create_fills_server_fields_and_a_second_create_is_already_exists() {
    let fake = FakeApiServer::start().await;
    let api = api(&fake, "prod");
    let created = api.create(&PostParams::default(), &request("rr-1", &[])).await.expect("create");
    assert_eq!(created.metadata.namespace.as_deref(), Some("prod"));
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.as_deref().is_some_and(|uid| uid.len() == 36));
    assert!(created.metadata.resource_version.as_deref().is_some_and(|rv| rv.parse::<u64>().is_ok()));
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.data["spec"]["signalFingerprint"], "fp-rr-1");
    assert!(created.data.get("status").is_none(), "status is dropped on create: {:?}", created.data);
    assert_eq!(fake.log_statuses(), [(Verb::Create, 201)]);

    let status = api_status(api.create(&PostParams::default(), &request("rr-1", &[])).await);
    assert_eq!(status.code, 409);
    assert_eq!(status.reason, "AlreadyExists");
    assert_eq!(status.message, r#"remediationrequests.remediation.kubernaut.io "rr-1" already exists"#);
    let details = status.details.expect("details");
    assert_eq!((details.name.as_str(), details.group.as_str(), details.kind.as_str()), ("rr-1", GROUP, PLURAL));
    assert_eq!(fake.objects(PLURAL).len(), 1);
}

#[tokio::test]
async fn already_exists_has_the_api_server_wire_format() {
    let fake = FakeApiServer::start().await;
    let url = format!("{}/apis/{GROUP}/v1alpha1/namespaces/default/{PLURAL}", fake.url());
    let body =
        json!({ "apiVersion": format!("{GROUP}/v1alpha1"), "kind": "RemediationRequest", "metadata": { "name": "x" } });
    let http = reqwest::Client::new();
    let first = http.post(&url).json(&body).send().await.expect("first POST");
    assert_eq!(first.status(), 201);
    let second = http.post(&url).json(&body).send().await.expect("second POST");
    assert_eq!(second.status(), 409);
    assert_eq!(second.headers()["content-type"], "application/json");
    let status: Value = second.json().await.expect("Status body");
    assert_eq!(
        status,
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"remediationrequests.remediation.kubernaut.io \"x\" already exists",
               "reason":"AlreadyExists",
               "details":{"name":"x","group":"remediation.kubernaut.io","kind":"remediationrequests"},
               "code":409})
    );
}

#[tokio::test]
async fn get_returns_the_object_or_not_found() {
    let fake = FakeApiServer::start().await;
    let api = api(&fake, "default");
    let created = api.create(&PostParams::default(), &request("rr-get", &[])).await.expect("create");
    let fetched = api.get("rr-get").await.expect("get");
    assert_eq!(fetched.metadata.uid, created.metadata.uid);
    assert_eq!(fake.get(PLURAL, "default", "rr-get").expect("stored")["spec"]["severity"], "critical");

    let status = api_status(api.get("nope").await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, r#"remediationrequests.remediation.kubernaut.io "nope" not found"#);
    assert!(api.get_opt("nope").await.expect("get_opt maps 404 to None").is_none());
    assert_eq!(fake.count(Verb::Get), 3);
}

#[tokio::test]
async fn list_filters_by_namespace_and_label_selector() {
    let fake = FakeApiServer::start().await;
    let prod = api(&fake, "prod");
    let staging = api(&fake, "staging");
    let pp = PostParams::default();
    prod.create(&pp, &request("a", &[("app", "web"), ("tier", "front")])).await.expect("create a");
    prod.create(&pp, &request("b", &[("app", "db")])).await.expect("create b");
    staging.create(&pp, &request("c", &[("app", "web")])).await.expect("create c");

    let names = |list: ::kube::core::ObjectList<DynamicObject>| {
        list.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
    };
    assert_eq!(names(prod.list(&ListParams::default()).await.expect("list")), ["a", "b"]);
    assert_eq!(names(prod.list(&ListParams::default().labels("app=web")).await.expect("list")), ["a"]);
    assert_eq!(names(prod.list(&ListParams::default().labels("app!=web")).await.expect("list")), ["b"]);
    assert_eq!(names(prod.list(&ListParams::default().labels("!tier")).await.expect("list")), ["b"]);
    assert_eq!(names(prod.list(&ListParams::default().fields("metadata.name=b")).await.expect("list")), ["b"]);

    let all: Api<DynamicObject> = Api::all_with(fake.client(), &resource());
    let everywhere = all.list(&ListParams::default().labels("app==web")).await.expect("cluster-wide list");
    assert_eq!(names(everywhere.clone()), ["a", "c"]);
    assert!(everywhere.metadata.resource_version.is_some());

    let status = api_status(prod.list(&ListParams::default().labels("app in web")).await);
    assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));
}

#[tokio::test]
async fn merge_patch_updates_spec_and_ignores_status_on_the_main_resource() {
    let fake = FakeApiServer::start().await;
    let api = api(&fake, "default");
    let created = api.create(&PostParams::default(), &request("rr", &[])).await.expect("create");
    let pp = PatchParams::default();

    let patched = api
        .patch(
            "rr",
            &pp,
            &Patch::Merge(json!({
                "metadata": { "labels": { "handled": "yes" } },
                "spec": { "severity": "warning", "signalFingerprint": null },
                "status": { "phase": "Sneaky" },
            })),
        )
        .await
        .expect("merge patch");
    assert_eq!(patched.data["spec"], json!({ "severity": "warning" }));
    assert!(patched.data.get("status").is_none(), "main resource must ignore status");
    assert_eq!(patched.labels()["handled"], "yes");
    assert_eq!(patched.metadata.generation, Some(2));
    assert_eq!(patched.metadata.uid, created.metadata.uid);
    assert_ne!(patched.metadata.resource_version, created.metadata.resource_version);

    let with_status = api
        .patch_status(
            "rr",
            &pp,
            &Patch::Merge(
                json!({ "status": { "phase": "Processing", "attempts": 1 }, "spec": { "severity": "ignored" } }),
            ),
        )
        .await
        .expect("status patch");
    assert_eq!(with_status.data["status"], json!({ "phase": "Processing", "attempts": 1 }));
    assert_eq!(with_status.data["spec"]["severity"], "warning", "/status must ignore spec");
    assert_eq!(with_status.metadata.generation, Some(2), "status changes do not bump generation");
    assert_ne!(with_status.metadata.resource_version, patched.metadata.resource_version);

    let cleared = api
        .patch_status("rr", &pp, &Patch::Merge(json!({ "status": { "attempts": null } })))
        .await
        .expect("status patch removing a field");
    assert_eq!(cleared.data["status"], json!({ "phase": "Processing" }));

    // A patch that changes nothing does not bump the resourceVersion, as on a real server.
    let unchanged =
        api.patch("rr", &pp, &Patch::Merge(json!({ "spec": { "severity": "warning" } }))).await.expect("no-op");
    assert_eq!(unchanged.metadata.resource_version, cleared.metadata.resource_version);
    assert_eq!(fake.get(PLURAL, "default", "rr").expect("stored")["status"]["phase"], "Processing");
}

#[tokio::test]
async fn stale_resource_versions_conflict() {
    let fake = FakeApiServer::start().await;
    let api = api(&fake, "default");
    let created = api.create(&PostParams::default(), &request("rr", &[])).await.expect("create");
    let stale = created.resource_version().expect("resourceVersion");
    api.patch("rr", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "severity": "info" } })))
        .await
        .expect("patch");

    let status = api_status(
        api.patch(
            "rr",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "resourceVersion": stale }, "spec": { "severity": "x" } })),
        )
        .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status
            .message
            .starts_with(r#"Operation cannot be fulfilled on remediationrequests.remediation.kubernaut.io "rr""#),
        "{}",
        status.message
    );

    let status = api_status(api.replace("rr", &PostParams::default(), &created).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    let status = api_status(api.replace_status("rr", &PostParams::default(), &created).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));

    // Custom resources do not allow unconditional updates.
    let mut unconditional = created.clone();
    unconditional.metadata.resource_version = None;
    let status = api_status(api.replace("rr", &PostParams::default(), &unconditional).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));

    let mut current = api.get("rr").await.expect("get");
    current.data["spec"]["severity"] = json!("page");
    let replaced = api.replace("rr", &PostParams::default(), &current).await.expect("replace at current version");
    assert_eq!(replaced.data["spec"]["severity"], "page");
    assert_eq!(replaced.metadata.generation, Some(3));
}

#[tokio::test]
async fn missing_namespace_rejects_creates() {
    let fake = FakeApiServer::start().await;
    fake.set_missing_namespace("ghost");
    let status = api_status(api(&fake, "ghost").create(&PostParams::default(), &request("rr", &[])).await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, r#"namespaces "ghost" not found"#);
    assert_eq!(status.details.expect("details").kind, "namespaces");
    api(&fake, "real").create(&PostParams::default(), &request("rr", &[])).await.expect("other namespaces exist");
}

#[tokio::test]
async fn injected_429_surfaces_as_an_api_error_without_retries() {
    let fake = FakeApiServer::start().await;
    fake.inject_for(Verb::Create, Fault::Status { code: 429, retry_after_secs: Some(1) }, 1);
    let api: Api<DynamicObject> = Api::namespaced_with(fake.client_without_retry(), "default", &resource());
    // kube makes a Status of a body that is not one: the code survives, the header does not.
    let status = api_status(api.create(&PostParams::default(), &request("rr", &[])).await);
    assert_eq!((status.code, status.message.as_str()), (429, "Too many requests, please try again later."));
    assert!(status.details.is_none(), "{status:?}");
    api.create(&PostParams::default(), &request("rr", &[])).await.expect("fault used up");
    assert_eq!(fake.log_statuses(), [(Verb::Create, 429), (Verb::Create, 201)]);
}

#[tokio::test]
async fn default_client_retries_429_and_503_but_not_500() {
    let fake = FakeApiServer::start().await;
    let api = api(&fake, "default");
    fake.inject(Fault::Status { code: 429, retry_after_secs: None }, 1);
    fake.inject(Fault::Status { code: 503, retry_after_secs: None }, 1);
    api.create(&PostParams::default(), &request("rr", &[])).await.expect("kube retries 429 and 503");
    assert_eq!(fake.log_statuses(), [(Verb::Create, 429), (Verb::Create, 503), (Verb::Create, 201)]);

    fake.inject_for(Verb::Get, Fault::Status { code: 500, retry_after_secs: None }, 1);
    let status = api_status(api.get("rr").await);
    assert_eq!((status.code, status.reason.as_str()), (500, "InternalError"));
}

#[tokio::test]
async fn a_429_is_plain_text_with_retry_after_as_the_api_server_sends_it() {
    let fake = FakeApiServer::start().await;
    fake.inject(Fault::Status { code: 429, retry_after_secs: Some(7) }, 1);
    let url = format!("{}/apis/{GROUP}/v1alpha1/namespaces/default/{PLURAL}", fake.url());
    let response = reqwest::Client::new().get(&url).send().await.expect("GET");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(response.text().await.expect("body"), "Too many requests, please try again later.\n");
}

#[tokio::test]
async fn other_injected_codes_are_status_objects_with_retry_after_in_both_places() {
    let fake = FakeApiServer::start().await;
    fake.inject(Fault::Status { code: 503, retry_after_secs: Some(3) }, 1);
    let url = format!("{}/apis/{GROUP}/v1alpha1/namespaces/default/{PLURAL}", fake.url());
    let response = reqwest::Client::new().get(&url).send().await.expect("GET");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "3");
    let body: Value = response.json().await.expect("Status body");
    assert_eq!((body["reason"].as_str(), body["code"].as_u64()), (Some("ServiceUnavailable"), Some(503)));
    assert_eq!(body["details"]["retryAfterSeconds"], 3);
}

#[tokio::test]
async fn commit_then_504_stores_the_write_and_loses_the_answer() {
    let fake = FakeApiServer::start().await;
    let api: Api<DynamicObject> = Api::namespaced_with(fake.client_without_retry(), "default", &resource());
    fake.inject_for(Verb::Create, Fault::CommitThenStatus { code: 504 }, 1);
    let status = api_status(api.create(&PostParams::default(), &request("rr", &[])).await);
    assert_eq!((status.code, status.reason.as_str()), (504, "Timeout"));
    let stored = fake.get(PLURAL, "default", "rr").expect("the create was committed");
    let rv = stored["metadata"]["resourceVersion"].clone();

    fake.inject_for(Verb::Patch, Fault::CommitThenStatus { code: 504 }, 1);
    let patch = Patch::Merge(json!({ "metadata": { "resourceVersion": rv }, "spec": { "severity": "info" } }));
    let status = api_status(api.patch("rr", &PatchParams::default(), &patch).await);
    assert_eq!(status.code, 504);
    assert_eq!(fake.get(PLURAL, "default", "rr").expect("stored")["spec"]["severity"], "info");
    // The retry of the same conditional patch meets its own commit.
    let status = api_status(api.patch("rr", &PatchParams::default(), &patch).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(fake.log_statuses(), [(Verb::Create, 504), (Verb::Patch, 504), (Verb::Patch, 409)]);
}

#[tokio::test]
async fn resets_close_the_connection_before_or_after_the_commit() {
    let fake = FakeApiServer::start().await;
    let api: Api<DynamicObject> = Api::namespaced_with(fake.client_without_retry(), "default", &resource());
    fake.inject_for(Verb::Create, Fault::Reset, 1);
    let err = api.create(&PostParams::default(), &request("rr", &[])).await.expect_err("no answer");
    assert!(!matches!(err, ::kube::Error::Api(_)), "a reset is not an answer: {err:?}");
    assert!(fake.objects(PLURAL).is_empty(), "a reset before serving commits nothing");

    fake.inject_for(Verb::Create, Fault::CommitThenReset, 1);
    let err = api.create(&PostParams::default(), &request("rr", &[])).await.expect_err("no answer");
    assert!(!matches!(err, ::kube::Error::Api(_)), "a reset is not an answer: {err:?}");
    assert!(fake.get(PLURAL, "default", "rr").is_some(), "a reset after serving keeps the commit");

    // Not a byte of an answer goes out.
    fake.inject_for(Verb::Get, Fault::Reset, 1);
    let mut raw = tokio::net::TcpStream::connect(fake.url().trim_start_matches("http://")).await.expect("connect");
    let head = format!("GET /apis/{GROUP}/v1alpha1/namespaces/default/{PLURAL}/rr HTTP/1.1\r\nhost: fake\r\n\r\n");
    raw.write_all(head.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer).await;
    assert_eq!(String::from_utf8_lossy(&answer), "");

    // The server keeps serving on fresh connections.
    let status = api_status(api.create(&PostParams::default(), &request("rr", &[])).await);
    assert_eq!(status.reason, "AlreadyExists");
    assert_eq!(fake.log_statuses(), [(Verb::Create, 0), (Verb::Create, 0), (Verb::Get, 0), (Verb::Create, 409)]);
}

#[tokio::test]
async fn one_answer_fault_per_request_in_injection_order() {
    let fake = FakeApiServer::start().await;
    let api: Api<DynamicObject> = Api::namespaced_with(fake.client_without_retry(), "default", &resource());
    fake.inject(Fault::Status { code: 500, retry_after_secs: None }, 1);
    fake.inject(Fault::CommitThenStatus { code: 504 }, 1);
    for _ in 0..3 {
        let _ = api.create(&PostParams::default(), &request("rr", &[])).await;
    }
    assert_eq!(fake.log_statuses(), [(Verb::Create, 500), (Verb::Create, 504), (Verb::Create, 409)]);
}

#[tokio::test]
async fn latency_fault_delays_only_matching_requests() {
    let fake = FakeApiServer::start().await;
    let api = api(&fake, "default");
    api.create(&PostParams::default(), &request("rr", &[])).await.expect("create");
    fake.inject_for(Verb::Get, Fault::Latency(Duration::from_millis(300)), 1);

    let started = Instant::now();
    api.list(&ListParams::default()).await.expect("list is not delayed");
    let list_took = started.elapsed();
    let started = Instant::now();
    api.get("rr").await.expect("delayed get");
    let get_took = started.elapsed();
    assert!(get_took >= Duration::from_millis(300), "get took {get_took:?}");
    assert!(list_took < Duration::from_millis(300), "list took {list_took:?}");
    let started = Instant::now();
    api.get("rr").await.expect("second get");
    assert!(started.elapsed() < Duration::from_millis(300), "the fault applies once");
}

#[tokio::test]
async fn delete_removes_the_object() {
    let fake = FakeApiServer::start().await;
    let api = api(&fake, "default");
    api.create(&PostParams::default(), &request("rr", &[])).await.expect("create");
    api.delete("rr", &DeleteParams::default()).await.expect("delete");
    assert!(fake.objects(PLURAL).is_empty());
    let status = api_status(api.delete("rr", &DeleteParams::default()).await);
    assert_eq!(status.code, 404);
}

#[tokio::test]
async fn unsupported_requests_fail_loudly() {
    let fake = FakeApiServer::start().await;
    let api = api(&fake, "default");
    api.create(&PostParams::default(), &request("rr", &[])).await.expect("create");
    let status = api_status(api.patch("rr", &PatchParams::default(), &Patch::Strategic(json!({ "spec": {} }))).await);
    assert_eq!((status.code, status.reason.as_str()), (415, "UnsupportedMediaType"));
    let status = api_status(api.patch("rr", &PatchParams::apply("test"), &Patch::Apply(json!({ "spec": {} }))).await);
    assert_eq!(status.code, 415);

    let http = reqwest::Client::new();
    let core = http.get(format!("{}/api/v1/namespaces/default/pods", fake.url())).send().await.expect("core request");
    assert_eq!(core.status(), 404);
}

/// A watch from a resourceVersion streams the later changes, as newline-delimited JSON
/// events with their resourceVersions, filtered by label; one from `0` starts with every
/// object; one from a version older than the events kept gets 410 `Expired`.
#[tokio::test]
async fn a_watch_streams_changes_after_its_resource_version() {
    use ::kube::api::WatchParams;
    use ::kube::core::WatchEvent;
    use futures::StreamExt as _;

    let fake = FakeApiServer::start().await;
    let api = api(&fake, "default");
    api.create(&PostParams::default(), &request("before", &[("team", "a")])).await.expect("create");
    let listed = api.list(&ListParams::default()).await.expect("list");
    let from = listed.metadata.resource_version.expect("a list's resourceVersion");

    let params = WatchParams::default().labels("team=a").timeout(5);
    let mut events = api.watch(&params, &from).await.expect("watch").boxed();
    api.create(&PostParams::default(), &request("other", &[("team", "b")])).await.expect("create");
    api.create(&PostParams::default(), &request("rr", &[("team", "a")])).await.expect("create");
    let patch = Patch::Merge(json!({ "status": { "overallPhase": "Completed" } }));
    let patched = api.patch_status("rr", &PatchParams::default(), &patch).await.expect("patch status");
    api.delete("rr", &DeleteParams::default()).await.expect("delete");

    let mut seen = Vec::new();
    while seen.len() < 3 {
        match events.next().await.expect("an event").expect("a valid event") {
            WatchEvent::Added(o) => seen.push(("ADDED", o.name_any(), o.resource_version())),
            WatchEvent::Modified(o) => seen.push(("MODIFIED", o.name_any(), o.resource_version())),
            WatchEvent::Deleted(o) => seen.push(("DELETED", o.name_any(), o.resource_version())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen[0].0, "ADDED");
    assert_eq!((seen[1].0, seen[1].2.clone()), ("MODIFIED", patched.resource_version()));
    assert_eq!(seen[2].0, "DELETED");
    assert!(seen.iter().all(|(_, name, _)| name == "rr"), "only what the selector selects: {seen:?}");
    assert!(seen[0].2 < seen[1].2 && seen[1].2 < seen[2].2, "{seen:?}");

    // From 0: the objects there now, first.
    let mut events = api.watch(&WatchParams::default().timeout(5), "0").await.expect("watch").boxed();
    let mut names = Vec::new();
    for _ in 0..2 {
        if let Some(Ok(WatchEvent::Added(o))) = events.next().await {
            names.push(o.name_any());
        }
    }
    names.sort();
    assert_eq!(names, ["before", "other"]);
    assert!(fake.count(Verb::Watch) >= 2);
}

/// `kube::runtime::watcher`, which crd-writer uses, lists then watches the fake server.
#[tokio::test]
async fn kube_runtime_watcher_sees_every_change() {
    use ::kube::runtime::watcher::{self, Event};
    use futures::StreamExt as _;

    let fake = FakeApiServer::start().await;
    let api = api(&fake, "default");
    api.create(&PostParams::default(), &request("first", &[])).await.expect("create");
    let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("in time") {
            Some(Ok(Event::InitApply(o))) => initial.push(o.name_any()),
            Some(Ok(Event::InitDone)) => break,
            Some(Ok(Event::Init)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, ["first"]);
    api.create(&PostParams::default(), &request("second", &[])).await.expect("create");
    match tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("in time") {
        Some(Ok(Event::Apply(o))) => assert_eq!(o.name_any(), "second"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn oversized_writes_fail_as_on_a_real_server() {
    let fake = FakeApiServer::start().await;
    let api = api(&fake, "default");
    let pp = PostParams::default();
    let with_note = |name: &str, bytes: usize| {
        let mut object = request(name, &[]);
        object.data["spec"]["note"] = json!("x".repeat(bytes));
        object
    };

    let status = api_status(api.create(&pp, &with_note("huge", 3 * 1024 * 1024)).await);
    assert_eq!((status.code, status.reason.as_str()), (413, "RequestEntityTooLarge"));
    assert_eq!(status.message, "Request entity too large: limit is 3145728");

    let status = api_status(api.create(&pp, &with_note("big", 2 * 1024 * 1024)).await);
    assert_eq!((status.code, status.reason.as_str()), (500, ""));
    assert_eq!(status.message, "etcdserver: request is too large");
    assert!(fake.objects(PLURAL).is_empty());

    api.create(&pp, &with_note("grows", 1024 * 1024)).await.expect("1 MiB fits");
    let grow = Patch::Merge(json!({ "spec": { "more": "y".repeat(1024 * 1024) } }));
    let status = api_status(api.patch("grows", &PatchParams::default(), &grow).await);
    assert_eq!((status.code, status.message.as_str()), (500, "etcdserver: request is too large"));
    assert!(fake.get(PLURAL, "default", "grows").expect("stored")["spec"].get("more").is_none());
}

#[tokio::test]
async fn serves_version_for_the_client() {
    let fake = FakeApiServer::start().await;
    let info = fake.client().apiserver_version().await.expect("/version");
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "33"));
}

/// A typed custom resource, as `breakwater-crd-writer` defines its own.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "remediation.kubernaut.io",
    version = "v1alpha1",
    kind = "RemediationRequest",
    namespaced,
    status = "RemediationRequestStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
struct RemediationRequestSpec {
    signal_fingerprint: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct RemediationRequestStatus {
    phase: String,
}

#[tokio::test]
async fn typed_custom_resources_round_trip() {
    let fake = FakeApiServer::start().await;
    let api: Api<RemediationRequest> = Api::default_namespaced(fake.client());
    let object = RemediationRequest::new("typed", RemediationRequestSpec { signal_fingerprint: "abc".into() });
    api.create(&PostParams::default(), &object).await.expect("typed create");
    let updated = api
        .patch_status("typed", &PatchParams::default(), &Patch::Merge(json!({ "status": { "phase": "Pending" } })))
        .await
        .expect("typed status patch");
    assert_eq!(updated.status, Some(RemediationRequestStatus { phase: "Pending".into() }));
    assert_eq!(updated.spec.signal_fingerprint, "abc");
    assert_eq!(fake.get(PLURAL, "default", "typed").expect("stored")["kind"], "RemediationRequest");
}

impl FakeApiServer {
    /// The request log without paths, for compact assertions.
    fn log_statuses(&self) -> Vec<(Verb, u16)> {
        self.request_log().into_iter().map(|(verb, _, status)| (verb, status)).collect()
    }
}

/// A schema with one of each keyword the validator supports.
fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["signalFingerprint", "severity"],
                "properties": {
                    "signalFingerprint": { "type": "string", "maxLength": 64, "pattern": "^[a-f0-9]{64}$" },
                    "severity": { "type": "string", "enum": ["critical", "warning", "info"] },
                    "environment": { "type": "string", "minLength": 1, "maxLength": 5 },
                    "count": { "type": "integer", "format": "int64", "minimum": 1 },
                    "ratio": { "type": "number", "maximum": 1.5 },
                    "isStorm": { "type": "boolean", "default": false },
                    "seenAt": { "type": "string", "format": "date-time", "nullable": true },
                    "payload": { "type": "string", "format": "byte" },
                    "labels": { "type": "object", "additionalProperties": { "type": "string" } },
                    "resources": { "type": "array", "items": { "type": "string", "maxLength": 3 } },
                    "port": { "x-kubernetes-int-or-string": true },
                    "extra": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
                    "note": { "type": "string" },
                },
            },
            "status": {
                "type": "object",
                "nullable": true,
                "properties": { "phase": { "type": "string", "enum": ["Pending", "Done"] } },
            },
        },
    })
}

const FINGERPRINT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn valid(name: &str) -> DynamicObject {
    DynamicObject::new(name, &resource()).data(json!({
        "spec": { "signalFingerprint": FINGERPRINT, "severity": "critical" },
    }))
}

/// `(field, reason, message)` of each cause of a 422.
fn causes(status: &Status) -> Vec<(String, String, String)> {
    let details = status.details.as_ref().expect("details");
    details.causes.iter().map(|c| (c.field.clone(), c.reason.clone(), c.message.clone())).collect()
}

#[tokio::test]
async fn schema_violations_are_422_invalid_with_a_cause_per_field() {
    let fake = FakeApiServer::start().await;
    fake.set_schema(PLURAL, schema());
    let api = api(&fake, "default");
    let mut object = valid("rr");
    object.data["spec"]["signalFingerprint"] = json!("x");
    let status = api_status(api.create(&PostParams::default(), &object).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        r#"RemediationRequest.remediation.kubernaut.io "rr" is invalid: spec.signalFingerprint: Invalid value: "x": spec.signalFingerprint in body should match '^[a-f0-9]{64}$'"#
    );
    let details = status.details.as_ref().expect("details");
    assert_eq!(
        (details.name.as_str(), details.group.as_str(), details.kind.as_str()),
        ("rr", GROUP, "RemediationRequest")
    );
    assert_eq!(
        causes(&status),
        [(
            "spec.signalFingerprint".to_owned(),
            "FieldValueInvalid".to_owned(),
            r#"Invalid value: "x": spec.signalFingerprint in body should match '^[a-f0-9]{64}$'"#.to_owned()
        )]
    );

    let object = DynamicObject::new("rr", &resource()).data(json!({
        "spec": {
            "severity": "fatal",
            "environment": "",
            "count": "7",
            "ratio": 2,
            "seenAt": "yesterday",
            "payload": "not base64!",
            "labels": { "team": 1 },
            "resources": ["ok", "toolong"],
            "port": true,
            "note": null,
        },
    }));
    let status = api_status(api.create(&PostParams::default(), &object).await);
    assert_eq!(status.code, 422);
    let mut got: Vec<(String, String)> =
        causes(&status).into_iter().map(|(field, _, message)| (field, message)).collect();
    got.sort();
    let want = [
        ("spec.count", r#"Invalid value: "string": spec.count in body must be of type integer: "string""#),
        ("spec.environment", r#"Invalid value: "": spec.environment in body should be at least 1 chars long"#),
        ("spec.labels.team", r#"Invalid value: "integer": spec.labels.team in body must be of type string: "integer""#),
        ("spec.payload", r#"Invalid value: "not base64!": spec.payload in body must be of type byte: "not base64!""#),
        ("spec.port", r#"Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean""#),
        ("spec.ratio", "Invalid value: 2: spec.ratio in body should be less than or equal to 1.5"),
        ("spec.resources[1]", "Too long: may not be more than 3 bytes"),
        ("spec.seenAt", r#"Invalid value: "yesterday": spec.seenAt in body must be of type date-time: "yesterday""#),
        ("spec.severity", r#"Unsupported value: "fatal": supported values: "critical", "warning", "info""#),
        ("spec.signalFingerprint", "Required value"),
    ];
    let want: Vec<(String, String)> = want.iter().map(|(f, m)| ((*f).to_owned(), (*m).to_owned())).collect();
    assert_eq!(got, want);
    assert!(status.message.contains(" is invalid: [spec."), "several errors are bracketed: {}", status.message);
    assert!(fake.objects(PLURAL).is_empty());
    assert_eq!(fake.log_statuses(), [(Verb::Create, 422), (Verb::Create, 422)]);
}

#[tokio::test]
async fn schema_checks_replace_patch_and_status_writes_on_the_resulting_object() {
    let fake = FakeApiServer::start().await;
    fake.set_schema(PLURAL, schema());
    let api = api(&fake, "default");
    let created = api.create(&PostParams::default(), &valid("rr")).await.expect("create");
    let rv = created.metadata.resource_version.clone();

    // The patch alone is valid JSON; the patched object lacks a required field.
    let patch = Patch::Merge(json!({ "spec": { "signalFingerprint": null } }));
    let status = api_status(api.patch("rr", &PatchParams::default(), &patch).await);
    assert_eq!(causes(&status)[0].0, "spec.signalFingerprint");
    assert_eq!(causes(&status)[0].1, "FieldValueRequired");

    let mut replaced = created.clone();
    replaced.data["spec"]["count"] = json!(0);
    let status = api_status(api.replace("rr", &PostParams::default(), &replaced).await);
    assert_eq!(causes(&status)[0].2, "Invalid value: 0: spec.count in body should be greater than or equal to 1");

    let patch = Patch::Merge(json!({ "status": { "phase": "Lost" } }));
    let status = api_status(api.patch_status("rr", &PatchParams::default(), &patch).await);
    assert_eq!(causes(&status)[0].0, "status.phase");

    let stored = fake.get(PLURAL, "default", "rr").expect("stored");
    assert_eq!(stored["metadata"]["resourceVersion"].as_str(), rv.as_deref(), "refused writes change nothing");

    let patch = Patch::Merge(json!({
        "spec": { "count": 3, "seenAt": "2025-06-01T12:00:00.5+02:00", "payload": "e30=", "port": "http" },
    }));
    api.patch("rr", &PatchParams::default(), &patch).await.expect("valid patch");
    let patch = Patch::Merge(json!({ "status": { "phase": "Done" } }));
    api.patch_status("rr", &PatchParams::default(), &patch).await.expect("valid status patch");
    let stored = fake.get(PLURAL, "default", "rr").expect("stored");
    assert_eq!((stored["spec"]["count"].clone(), stored["status"]["phase"].clone()), (json!(3), json!("Done")));
}

#[tokio::test]
async fn unknown_fields_are_pruned_and_defaults_filled_in() {
    let fake = FakeApiServer::start().await;
    fake.set_schema(PLURAL, schema());
    let api = api(&fake, "default");
    let mut object = valid("rr");
    object.data["spec"]["bogus"] = json!(1);
    object.data["spec"]["extra"] = json!({ "anything": { "goes": true } });
    object.data["topLevel"] = json!("x");
    let created = api.create(&PostParams::default(), &object).await.expect("create");
    assert!(created.data["spec"].get("bogus").is_none(), "{:?}", created.data);
    assert!(created.data.get("topLevel").is_none(), "{:?}", created.data);
    assert_eq!(created.data["spec"]["extra"], json!({ "anything": { "goes": true } }), "preserved");
    assert_eq!(created.data["spec"]["isStorm"], json!(false), "defaulted");
    assert_eq!(created.metadata.name.as_deref(), Some("rr"), "metadata is never pruned");

    // A write of only unknown fields is a no-op: the resourceVersion stays.
    let patch = Patch::Merge(json!({ "spec": { "bogus": 2 } }));
    let patched = api.patch("rr", &PatchParams::default(), &patch).await.expect("patch");
    assert_eq!(patched.metadata.resource_version, created.metadata.resource_version);
    assert!(patched.data["spec"].get("bogus").is_none());
}

#[tokio::test]
async fn strict_field_validation_rejects_unknown_fields() {
    let fake = FakeApiServer::start().await;
    fake.set_schema(PLURAL, schema());
    let url = format!("{}/apis/{GROUP}/v1alpha1/namespaces/default/{PLURAL}?fieldValidation=Strict", fake.url());
    let body = json!({
        "apiVersion": format!("{GROUP}/v1alpha1"),
        "kind": "RemediationRequest",
        "metadata": { "name": "rr" },
        "spec": { "signalFingerprint": "x", "severity": "critical", "bogus": 1 },
    });
    let answer = reqwest::Client::new().post(&url).json(&body).send().await.expect("POST");
    assert_eq!(answer.status(), 400);
    let status: Value = answer.json().await.expect("Status body");
    assert_eq!(status["reason"], "BadRequest");
    assert_eq!(
        status["message"],
        r#"RemediationRequest in version "v1alpha1" cannot be handled as a RemediationRequest: strict decoding error: unknown field "spec.bogus""#
    );

    let api = api(&fake, "default");
    api.create(&PostParams::default(), &valid("rr")).await.expect("create");
    let strict =
        PatchParams { field_validation: Some(::kube::api::ValidationDirective::Strict), ..PatchParams::default() };
    let status = api_status(api.patch("rr", &strict, &Patch::Merge(json!({ "spec": { "bogus": 1 } }))).await);
    assert_eq!((status.code, status.message.ends_with(r#"unknown field "spec.bogus""#)), (400, true), "{status:?}");
    api.patch("rr", &strict, &Patch::Merge(json!({ "spec": { "note": "known" } }))).await.expect("known field");
}

#[tokio::test]
async fn a_schema_for_one_plural_leaves_others_unchecked() {
    let fake = FakeApiServer::start().await;
    fake.set_schema("widgets", schema());
    let api = api(&fake, "default");
    let created = api.create(&PostParams::default(), &request("rr", &[])).await.expect("create");
    assert_eq!(created.data["spec"]["signalFingerprint"], "fp-rr");
}

#[tokio::test]
async fn token_and_access_reviews_answer_what_the_test_set() {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};

    let fake = FakeApiServer::start().await;
    fake.accept_token("good", "system:serviceaccount:monitoring:alertmanager", &["system:serviceaccounts"]);
    fake.grant("system:serviceaccounts", "create", GROUP, PLURAL);
    let tokens: Api<TokenReview> = Api::all(fake.client());
    let review = |token: &str| TokenReview {
        spec: TokenReviewSpec { token: token.into(), audiences: None },
        ..TokenReview::default()
    };
    let status = tokens.create(&PostParams::default(), &review("good")).await.unwrap().status.unwrap();
    assert_eq!(status.authenticated, Some(true));
    let user = status.user.unwrap();
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:monitoring:alertmanager"));
    let status = tokens.create(&PostParams::default(), &review("bad")).await.unwrap().status.unwrap();
    assert_ne!(status.authenticated, Some(true));
    assert!(status.error.is_some());

    let access: Api<SubjectAccessReview> = Api::all(fake.client());
    let ask = |groups: Vec<String>, verb: &str| SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some("someone".into()),
            groups: Some(groups),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(GROUP.into()),
                resource: Some(PLURAL.into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let allowed = |r: SubjectAccessReview| r.status.unwrap().allowed;
    assert!(allowed(
        access.create(&PostParams::default(), &ask(vec!["system:serviceaccounts".into()], "create")).await.unwrap()
    ));
    assert!(!allowed(
        access.create(&PostParams::default(), &ask(vec!["system:serviceaccounts".into()], "delete")).await.unwrap()
    ));
    assert!(!allowed(access.create(&PostParams::default(), &ask(vec![], "create")).await.unwrap()));
    assert_eq!(fake.count(Verb::Create), 5, "each review is logged as a create");

    // Faulted like any create: the caller sees the API error.
    fake.inject_for(Verb::Create, Fault::Status { code: 503, retry_after_secs: None }, 1);
    let failed =
        Api::<TokenReview>::all(fake.client_without_retry()).create(&PostParams::default(), &review("good")).await;
    assert!(matches!(failed, Err(::kube::Error::Api(ref s)) if s.code == 503), "{failed:?}");
}

#[tokio::test]
async fn namespaces_and_configmaps_are_read_as_from_a_real_server() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    let fake = FakeApiServer::start().await;
    let namespaces: Api<Namespace> = Api::all(fake.client());
    let configmaps: Api<ConfigMap> = Api::namespaced(fake.client(), "kubernaut-system");

    // Every namespace exists; the API server's own label is always there.
    let plain = namespaces.get("shop").await.expect("get namespace");
    let labels = plain.metadata.labels.expect("labels");
    assert_eq!(labels.get("kubernetes.io/metadata.name").map(String::as_str), Some("shop"));
    assert_eq!(labels.len(), 1);
    fake.set_namespace_labels("shop", &[("environment", "production")]);
    let labelled = namespaces.get("shop").await.expect("get namespace");
    assert_eq!(labelled.labels().get("environment").map(String::as_str), Some("production"));
    fake.set_missing_namespace("gone");
    let status = api_status(namespaces.get("gone").await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, "namespaces \"gone\" not found");

    let status = api_status(configmaps.get("overrides").await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, "configmaps \"overrides\" not found");
    fake.set_configmap("kubernaut-system", "overrides", &[("shop", "staging")]);
    let map = configmaps.get("overrides").await.expect("get configmap");
    assert_eq!(map.data.expect("data").get("shop").map(String::as_str), Some("staging"));
    assert!(api_status(Api::<ConfigMap>::namespaced(fake.client(), "other").get("overrides").await).code == 404);
    fake.remove_configmap("kubernaut-system", "overrides");
    assert_eq!(api_status(configmaps.get("overrides").await).code, 404);

    // Read-only: writes are refused; GETs are logged and faulted like any other.
    let status = api_status(configmaps.delete("overrides", &DeleteParams::default()).await);
    assert_eq!(status.code, 405);
    fake.inject_for(Verb::Get, Fault::Status { code: 500, retry_after_secs: None }, 1);
    assert_eq!(api_status(Api::<Namespace>::all(fake.client_without_retry()).get("shop").await).code, 500);
    let gets: Vec<String> =
        fake.request_log().into_iter().filter(|(verb, _, _)| *verb == Verb::Get).map(|(_, path, _)| path).collect();
    assert_eq!(gets.first().map(String::as_str), Some("/api/v1/namespaces/shop"));
    assert!(gets.contains(&"/api/v1/namespaces/kubernaut-system/configmaps/overrides".to_owned()));
}
