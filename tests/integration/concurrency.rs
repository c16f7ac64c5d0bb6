//! Promises 1–3 under concurrency, on both backends (reference §11.3, §11.4):
//! exactly one CR per incident, one storm CR per storm, and every accepted
//! firing alert accounted for in exactly one CR.

use std::time::Duration;

use breakwater_testkit::{Verb, assert_eventually};
use breakwater_tests::{Alert, Backend, TestGateway, accounted_alerts, webhook};
use futures::future::join_all;
use serde_json::Value;

/// Posts every body concurrently; returns (status, answer) in order.
async fn post_all(gw: &TestGateway, bodies: &[Value]) -> Vec<(u16, Value)> {
    join_all(bodies.iter().map(|b| gw.post_prometheus(b))).await
}

fn storm_crs(crs: &[Value]) -> Vec<&Value> {
    crs.iter().filter(|cr| cr["spec"]["isStorm"] == true).collect()
}

fn incident_crs(crs: &[Value]) -> Vec<&Value> {
    crs.iter().filter(|cr| cr["spec"]["isStorm"] != true).collect()
}

/// Firing alerts the gateway accepted (2xx), from the answers.
fn accepted_firing(answers: &[(u16, Value)]) -> u64 {
    answers
        .iter()
        .filter(|(status, _)| (200..300).contains(status))
        .flat_map(|(_, a)| a["results"].as_array().cloned().unwrap_or_default())
        .filter(|r| !r["outcome"].as_str().is_some_and(|o| o.starts_with("resolved")))
        .count() as u64
}

async fn assert_invariant(gw: &TestGateway, accepted: u64) {
    assert_eventually!(
        Duration::from_secs(10),
        async { accounted_alerts(&gw.remediations()) == accepted },
        "accounted {} of {accepted} accepted alerts",
        accounted_alerts(&gw.remediations())
    );
}

/// "Should deduplicate 100 identical concurrent alerts" and "…duplicates arriving
/// within race window (<1ms)": one CR, occurrenceCount 100.
async fn hundred_identical_concurrent_alerts_make_one_cr(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let body = webhook(&[Alert::firing("HighMemory").in_ns("prod").pod("api-1")]);
    let answers = post_all(&gw, &vec![body; 100]).await;
    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    let duplicates = answers.iter().filter(|(s, _)| *s == 202).count();
    assert_eq!((created, duplicates), (1, 99), "{:?}", answers.iter().map(|(s, _)| s).collect::<Vec<_>>());
    assert_eventually!(
        Duration::from_secs(10),
        async {
            let crs = gw.remediations();
            crs.len() == 1 && crs[0]["spec"]["deduplication"]["occurrenceCount"] == 100
        },
        "one CR counting 100: {:?}",
        gw.remediations().iter().map(|cr| cr["spec"]["deduplication"].clone()).collect::<Vec<_>>()
    );
    assert_invariant(&gw, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_identical_concurrent_alerts_make_one_cr_embedded() {
    hundred_identical_concurrent_alerts_make_one_cr(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_identical_concurrent_alerts_make_one_cr_redis_and_kube() {
    hundred_identical_concurrent_alerts_make_one_cr(Backend::RedisAndKube).await;
}

/// "Should detect storm with 50 concurrent similar alerts": the five
/// pre-threshold CRs plus exactly one storm CR listing the other 45 pods.
async fn fifty_pods_make_five_crs_and_one_storm(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let bodies: Vec<Value> =
        (0..50).map(|p| webhook(&[Alert::firing("PodCrashLooping").in_ns("prod").pod(&format!("api-{p}"))])).collect();
    let answers = post_all(&gw, &bodies).await;
    assert!(answers.iter().all(|(s, _)| *s == 201 || *s == 202), "{answers:?}");
    let opened = answers.iter().filter(|(_, a)| a["results"][0]["outcome"] == "storm_created").count();
    assert_eq!(opened, 1);
    // Counts are absolute but writes race each other to crd-writer, so the
    // count can reach 45 a flush before the last resources are listed: wait for both.
    let listed =
        |crs: &[Value]| storm_crs(crs).first().and_then(|s| s["spec"]["affectedResources"].as_array().map(Vec::len));
    assert_eventually!(
        Duration::from_secs(10),
        async {
            let crs = gw.remediations();
            let storms = storm_crs(&crs);
            incident_crs(&crs).len() == 5
                && storms.len() == 1
                && storms[0]["spec"]["stormAlertCount"] == 45
                && listed(&crs) == Some(45)
        },
        "5 CRs and one storm CR counting and listing 45: {:?}",
        gw.remediations()
            .iter()
            .map(|cr| (
                cr["metadata"]["name"].clone(),
                cr["spec"]["stormAlertCount"].clone(),
                listed(std::slice::from_ref(cr))
            ))
            .collect::<Vec<_>>()
    );
    let crs = gw.remediations();
    let storm = storm_crs(&crs)[0];
    assert_eq!(storm["metadata"]["labels"]["kubernaut.io/storm"], "true");
    assert_eq!(storm["spec"]["stormType"], "pattern");
    assert_invariant(&gw, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pods_make_five_crs_and_one_storm_embedded() {
    fifty_pods_make_five_crs_and_one_storm(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pods_make_five_crs_and_one_storm_redis_and_kube() {
    fifty_pods_make_five_crs_and_one_storm(Backend::RedisAndKube).await;
}

/// A repeat of an alert that was folded into a storm counts on the storm CR.
async fn repeats_of_storm_alerts_count_on_the_storm_cr(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let pods: Vec<Alert> =
        (0..8).map(|p| Alert::firing("PodCrashLooping").in_ns("prod").pod(&format!("p{p}"))).collect();
    let (status, first) = gw.post_prometheus(&webhook(&pods)).await;
    assert_eq!(status, 201, "{first}");
    let storm_name = first["results"][5]["remediationRequestName"].as_str().expect("storm CR").to_owned();
    assert_eq!(first["results"][5]["outcome"], "storm_created");
    // p7 again (folded) and p0 again (its own CR).
    let (status, again) = gw.post_prometheus(&webhook(&[pods[7].clone(), pods[0].clone()])).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["results"][0]["outcome"], "storm_aggregated");
    assert_eq!(again["results"][0]["remediationRequestName"], storm_name.as_str());
    assert_eq!(again["results"][0]["stormAlertCount"], 4);
    assert_eq!(again["results"][1]["outcome"], "duplicate");
    assert_invariant(&gw, 10).await;
    let storm = gw.remediation("prod", &storm_name).expect("storm CR");
    assert_eq!(storm["spec"]["stormAlertCount"], 4);
}

#[tokio::test]
async fn repeats_of_storm_alerts_count_on_the_storm_cr_embedded() {
    repeats_of_storm_alerts_count_on_the_storm_cr(Backend::Embedded).await;
}

#[tokio::test]
async fn repeats_of_storm_alerts_count_on_the_storm_cr_redis_and_kube() {
    repeats_of_storm_alerts_count_on_the_storm_cr(Backend::RedisAndKube).await;
}

/// "Should handle mixed concurrent operations (create + duplicate + storm)" and
/// "…across multiple namespaces": the invariant holds whatever interleaves.
async fn mixed_traffic_keeps_the_invariant(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let mut bodies = Vec::new();
    for p in 0..30 {
        bodies.push(webhook(&[Alert::firing("PodCrashLooping").in_ns("prod").pod(&format!("p{p}"))]));
    }
    for _ in 0..20 {
        bodies.push(webhook(&[Alert::firing("HighMemory").in_ns("prod").pod("api-1")]));
    }
    for ns in ["a", "b", "c"] {
        for p in 0..4 {
            let a = Alert::firing("DiskFull").in_ns(ns).pod(&format!("db-{p}"));
            bodies.push(webhook(&[a.clone(), a.clone(), Alert::resolved("Other").in_ns(ns)]));
        }
    }
    // Repeats of storm alerts, in the same flood.
    for p in 0..10 {
        bodies.push(webhook(&[Alert::firing("PodCrashLooping").in_ns("prod").pod(&format!("p{p}"))]));
    }
    let answers = post_all(&gw, &bodies).await;
    assert!(
        answers.iter().all(|(s, _)| *s == 201 || *s == 202),
        "{:?}",
        answers.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    let accepted = accepted_firing(&answers);
    assert_eq!(accepted, 30 + 20 + 3 * 4 * 2 + 10);
    assert_invariant(&gw, accepted).await;
    let crs = gw.remediations();
    assert_eq!(storm_crs(&crs).len(), 1, "one storm: prod/PodCrashLooping");
    assert_eq!(gw.degraded_calls().await, 0, "no component was degraded around");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_traffic_keeps_the_invariant_embedded() {
    mixed_traffic_keeps_the_invariant(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_traffic_keeps_the_invariant_redis_and_kube() {
    mixed_traffic_keeps_the_invariant(Backend::RedisAndKube).await;
}

/// A burst of 1,000 duplicates causes far fewer than 1,000 Kubernetes writes,
/// yet the CR ends at the exact count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_duplicates_coalesce_into_few_kubernetes_writes() {
    let gw = TestGateway::start(Backend::RedisAndKube).await;
    let alert = Alert::firing("HighMemory").in_ns("prod").pod("api-1");
    let answers = post_all(&gw, &vec![webhook(&vec![alert; 50]); 20]).await;
    assert!(answers.iter().all(|(s, _)| *s == 201 || *s == 202), "{answers:?}");
    assert_eventually!(
        Duration::from_secs(10),
        async { gw.remediations().first().is_some_and(|cr| cr["spec"]["deduplication"]["occurrenceCount"] == 1000) },
        "the CR counts 1000: {:?}",
        gw.remediations().first().map(|cr| cr["spec"]["deduplication"].clone())
    );
    let api = gw.fake_api.as_ref().expect("fake API server");
    let writes = api.count(Verb::Create) + api.count(Verb::Patch) + api.count(Verb::Replace);
    assert!(writes < 100, "1000 duplicates took {writes} Kubernetes writes");
    assert_eq!(gw.remediations().len(), 1);
}

/// Stopping the gateway flushes pending counts: exact even when the flush
/// interval is far longer than the test.
async fn shutdown_flushes_pending_counts(backend: Backend) {
    let mut gw = TestGateway::start_with(backend, |c| c.crd_writer.flush_interval_ms = 60_000).await;
    let body = webhook(&[Alert::firing("HighMemory").in_ns("prod").pod("api-1")]);
    let answers = post_all(&gw, &vec![body; 10]).await;
    assert_eq!(answers.iter().filter(|(s, _)| *s == 201).count(), 1);
    gw.stop().await;
    let crs = gw.remediations();
    assert_eq!(crs.len(), 1);
    assert_eq!(crs[0]["spec"]["deduplication"]["occurrenceCount"], 10);
}

#[tokio::test]
async fn shutdown_flushes_pending_counts_embedded() {
    shutdown_flushes_pending_counts(Backend::Embedded).await;
}

#[tokio::test]
async fn shutdown_flushes_pending_counts_redis_and_kube() {
    shutdown_flushes_pending_counts(Backend::RedisAndKube).await;
}
