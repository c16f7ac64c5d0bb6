//! An incident's life follows its CR: while the remediation controller has not finished a
//! CR, every firing alert of its incident counts on it, however long the gaps between them.
//! Each test runs on both backends and checks the invariant `accounted == accepted`.

use std::time::Duration;

use breakwater_testkit::assert_eventually;
use breakwater_tests::{Alert, Backend, TestGateway, accounted_alerts, webhook};
use serde_json::Value;

fn outcome(answer: &Value) -> &str {
    answer["results"][0]["outcome"].as_str().unwrap_or("?")
}

fn cr_name(answer: &Value) -> String {
    answer["results"][0]["remediationRequestName"].as_str().unwrap_or_default().to_owned()
}

/// The CRs come to count exactly `accepted` alerts, in `crs` CRs.
async fn settles_at(gw: &TestGateway, accepted: u64, crs: usize) {
    assert_eventually!(
        Duration::from_secs(10),
        async {
            let all = gw.remediations();
            accounted_alerts(&all) == accepted && all.len() == crs
        },
        "want {accepted} alerts on {crs} CRs: {:#?}",
        gw.remediations()
    );
}

/// Dedup's window (1 s) closes between the alerts, but the CR is still open (no phase
/// yet): each later alert is a duplicate on it, and dedup is pointed there for the rest of
/// its window.
async fn an_open_cr_older_than_the_window_still_counts_repeats(backend: Backend) {
    let mut gw = TestGateway::start_with(backend, |c| c.dedup.window_secs = 1).await;
    let alert = webhook(&[Alert::firing("DiskFull").in_ns("prod").pod("db-0")]);
    let (status, first) = gw.post_prometheus(&alert).await;
    assert_eq!((status, outcome(&first)), (201, "created"), "{first}");
    let name = cr_name(&first);
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let (status, later) = gw.post_prometheus(&alert).await;
        assert_eq!((status, outcome(&later)), (202, "duplicate"), "round {round}: {later}");
        assert_eq!(cr_name(&later), name, "round {round}: counted on the open CR");
        // Within the window that alert opened, dedup counts on the open CR at once.
        let (status, repeat) = gw.post_prometheus(&alert).await;
        assert_eq!((status, outcome(&repeat)), (202, "duplicate"), "round {round}: {repeat}");
        assert_eq!(cr_name(&repeat), name, "round {round}: dedup was pointed at the open CR");
    }
    settles_at(&gw, 5, 1).await;
    gw.stop().await;
}

#[tokio::test]
async fn an_open_cr_older_than_the_window_still_counts_repeats_embedded() {
    an_open_cr_older_than_the_window_still_counts_repeats(Backend::Embedded).await;
}

#[tokio::test]
async fn an_open_cr_older_than_the_window_still_counts_repeats_redis_and_kube() {
    an_open_cr_older_than_the_window_still_counts_repeats(Backend::RedisAndKube).await;
}

/// `now` moved by `offset_ms`, as the RFC 3339 time a controller writes in `status`.
fn time_at(offset_ms: i64) -> String {
    use breakwater_signal::Clock as _;
    let now = breakwater_signal::SystemClock.now() + offset_ms;
    // Whole seconds, as Kubernetes' metav1.Time has.
    jiff::Timestamp::from_second(now.div_euclid(1000)).expect("a time").to_string()
}

fn finished(phase: &str, completed_ms_ago: i64) -> Value {
    serde_json::json!({"overallPhase": phase, "completedAt": time_at(-completed_ms_ago)})
}

/// The remediation controller finished the CR, and the alert keeps being re-notified (each
/// time after dedup's 1 s window): within the cooldown (6 s) every alert counts on the
/// finished CR, marked as after completion, and no CR is created; after it, a new CR that
/// points at the finished one.
async fn a_finished_cr_counts_until_the_cooldown_then_a_new_cr_opens(backend: Backend) {
    let mut gw = TestGateway::start_with(backend, |c| {
        c.dedup.window_secs = 1;
        c.dedup.cooldown_secs = Some(6);
    })
    .await;
    let alert = webhook(&[Alert::firing("CrashLoop").in_ns("prod").pod("api-0")]);
    let (status, first) = gw.post_prometheus(&alert).await;
    assert_eq!((status, outcome(&first)), (201, "created"), "{first}");
    let old = cr_name(&first);
    settles_at(&gw, 1, 1).await;
    gw.set_status("prod", &old, finished("Completed", 0)).await;
    let started = std::time::Instant::now();
    // Re-notified twice within the cooldown, the first one repeated at once (dedup's window).
    for (round, repeats) in [(0, 2), (1, 1)] {
        tokio::time::sleep(Duration::from_millis(1300)).await;
        for _ in 0..repeats {
            let (status, later) = gw.post_prometheus(&alert).await;
            assert_eq!((status, outcome(&later)), (202, "duplicate"), "round {round}: {later}");
            assert_eq!(cr_name(&later), old, "round {round}: counted on the finished CR");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(6), "the test ran past its cooldown: the machine is too slow");
    settles_at(&gw, 4, 1).await;
    // After the cooldown (and dedup's window), a new CR linked to the finished one.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(started.elapsed()) + Duration::from_millis(500)).await;
    let (status, next) = gw.post_prometheus(&alert).await;
    assert_eq!((status, outcome(&next)), (201, "created"), "{next}");
    let new = cr_name(&next);
    assert_ne!(new, old);
    settles_at(&gw, 5, 2).await;
    let old_cr = gw.remediation("prod", &old).expect("the finished CR");
    assert_eq!(old_cr["spec"]["deduplication"]["occurrenceCount"], 4, "{old_cr:#}");
    assert_eq!(old_cr["spec"]["deduplication"]["occurrencesAfterCompletion"], 3, "{old_cr:#}");
    let new_cr = gw.remediation("prod", &new).expect("the new CR");
    assert_eq!(new_cr["spec"]["deduplication"]["previousRemediationRequestRef"], old.as_str(), "{new_cr:#}");
    assert_eq!(new_cr["spec"]["deduplication"]["occurrenceCount"], 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_finished_cr_counts_until_the_cooldown_then_a_new_cr_opens_embedded() {
    a_finished_cr_counts_until_the_cooldown_then_a_new_cr_opens(Backend::Embedded).await;
}

#[tokio::test]
async fn a_finished_cr_counts_until_the_cooldown_then_a_new_cr_opens_redis_and_kube() {
    a_finished_cr_counts_until_the_cooldown_then_a_new_cr_opens(Backend::RedisAndKube).await;
}

/// The remediation controller finished the CR, and the alert keeps firing less than dedup's
/// window (4 s) apart, so dedup's window alone would never close: within the cooldown (3 s)
/// every alert counts on the finished CR; crd-writer tells dedup (through the edge) when
/// the cooldown ends, and the first alert after it opens a new CR pointing at the old one.
async fn a_finished_cr_and_an_alert_that_keeps_firing(backend: Backend) {
    let mut gw = TestGateway::start_with(backend, |c| {
        c.dedup.window_secs = 4;
        c.dedup.cooldown_secs = Some(3);
    })
    .await;
    let alert = webhook(&[Alert::firing("CrashLoop").in_ns("prod").pod("api-1")]);
    let (status, first) = gw.post_prometheus(&alert).await;
    assert_eq!((status, outcome(&first)), (201, "created"), "{first}");
    let old = cr_name(&first);
    settles_at(&gw, 1, 1).await;
    // completedAt is in whole seconds, so the cooldown ends 2 to 3 s from now.
    let completed_at = jiff::Timestamp::from_second(time_at(0).parse::<jiff::Timestamp>().unwrap().as_second())
        .unwrap()
        .as_millisecond();
    gw.set_status("prod", &old, finished("Completed", 0)).await;
    let cooldown_ends = completed_at + 3_000;
    let (mut repeats, mut new) = (0u64, None);
    let give_up = std::time::Instant::now() + Duration::from_secs(12);
    while new.is_none() && std::time::Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let sent_at = now_ms();
        let (status, answer) = gw.post_prometheus(&alert).await;
        match (status, outcome(&answer)) {
            (202, "duplicate") => {
                assert_eq!(cr_name(&answer), old, "counted on the finished CR: {answer}");
                repeats += 1;
            }
            (201, "created") => {
                assert!(sent_at >= cooldown_ends, "a new CR {} ms before the cooldown ended", cooldown_ends - sent_at);
                new = Some(cr_name(&answer));
            }
            other => panic!("unexpected answer {other:?}: {answer}"),
        }
    }
    let new = new.expect("no new CR within 12 s: dedup's window never ended although the cooldown did");
    assert!(repeats >= 6, "the alert kept firing within the cooldown: {repeats} repeats");
    settles_at(&gw, repeats + 2, 2).await;
    let old_cr = gw.remediation("prod", &old).expect("the finished CR");
    assert_eq!(old_cr["spec"]["deduplication"]["occurrenceCount"], repeats + 1, "{old_cr:#}");
    assert_eq!(old_cr["spec"]["deduplication"]["occurrencesAfterCompletion"], repeats, "{old_cr:#}");
    let new_cr = gw.remediation("prod", &new).expect("the new CR");
    assert_eq!(new_cr["spec"]["deduplication"]["previousRemediationRequestRef"], old.as_str(), "{new_cr:#}");
    gw.stop().await;
}

fn now_ms() -> i64 {
    use breakwater_signal::Clock as _;
    breakwater_signal::SystemClock.now()
}

#[tokio::test]
async fn a_finished_cr_and_an_alert_that_keeps_firing_embedded() {
    a_finished_cr_and_an_alert_that_keeps_firing(Backend::Embedded).await;
}

#[tokio::test]
async fn a_finished_cr_and_an_alert_that_keeps_firing_redis_and_kube() {
    a_finished_cr_and_an_alert_that_keeps_firing(Backend::RedisAndKube).await;
}

/// The CR finished, then the alert resolved and fired again: a new CR at once (the cooldown
/// is long), linked to the finished one.
async fn resolved_after_the_finish_then_firing_opens_a_new_cr_at_once(backend: Backend) {
    let mut gw = TestGateway::start_with(backend, |c| c.dedup.cooldown_secs = Some(3600)).await;
    let firing = webhook(&[Alert::firing("OOMKilled").in_ns("prod").pod("worker-1")]);
    let (status, first) = gw.post_prometheus(&firing).await;
    assert_eq!((status, outcome(&first)), (201, "created"), "{first}");
    let old = cr_name(&first);
    settles_at(&gw, 1, 1).await;
    // Finished a little before now, so the resolution below is after it.
    gw.set_status("prod", &old, finished("Failed", 2000)).await;
    let (status, resolved) =
        gw.post_prometheus(&webhook(&[Alert::resolved("OOMKilled").in_ns("prod").pod("worker-1")])).await;
    assert_eq!((status, outcome(&resolved)), (202, "resolved"), "{resolved}");
    let (status, again) = gw.post_prometheus(&firing).await;
    assert_eq!((status, outcome(&again)), (201, "created"), "{again}");
    let new = cr_name(&again);
    assert_ne!(new, old);
    settles_at(&gw, 2, 2).await;
    let new_cr = gw.remediation("prod", &new).expect("the new CR");
    assert_eq!(new_cr["spec"]["deduplication"]["previousRemediationRequestRef"], old.as_str(), "{new_cr:#}");
    gw.stop().await;
}

#[tokio::test]
async fn resolved_after_the_finish_then_firing_opens_a_new_cr_at_once_embedded() {
    resolved_after_the_finish_then_firing_opens_a_new_cr_at_once(Backend::Embedded).await;
}

#[tokio::test]
async fn resolved_after_the_finish_then_firing_opens_a_new_cr_at_once_redis_and_kube() {
    resolved_after_the_finish_then_firing_opens_a_new_cr_at_once(Backend::RedisAndKube).await;
}

/// The resolution comes after dedup's window (1 s) closed, so dedup no longer holds the
/// incident: it is recorded on the incident's latest CR all the same (found by fingerprint),
/// and the next firing opens a new CR at once, although the cooldown is long.
async fn a_late_resolution_reaches_the_finished_cr(backend: Backend) {
    let mut gw = TestGateway::start_with(backend, |c| {
        c.dedup.window_secs = 1;
        c.dedup.cooldown_secs = Some(3600);
    })
    .await;
    let firing = webhook(&[Alert::firing("OOMKilled").in_ns("prod").pod("worker-2")]);
    let (status, first) = gw.post_prometheus(&firing).await;
    assert_eq!((status, outcome(&first)), (201, "created"), "{first}");
    let old = cr_name(&first);
    settles_at(&gw, 1, 1).await;
    gw.set_status("prod", &old, finished("Completed", 500)).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, resolved) =
        gw.post_prometheus(&webhook(&[Alert::resolved("OOMKilled").in_ns("prod").pod("worker-2")])).await;
    assert_eq!((status, outcome(&resolved)), (202, "resolved"), "{resolved}");
    assert_eq!(cr_name(&resolved), old, "{resolved}");
    assert_eventually!(
        Duration::from_secs(5),
        async { gw.remediation("prod", &old).is_some_and(|cr| cr["spec"]["deduplication"]["resolvedAt"].is_string()) },
        "the finished CR records the resolution: {:#?}",
        gw.remediation("prod", &old)
    );
    let (status, again) = gw.post_prometheus(&firing).await;
    assert_eq!((status, outcome(&again)), (201, "created"), "{again}");
    let new_cr = gw.remediation("prod", &cr_name(&again)).expect("the new CR");
    assert_eq!(new_cr["spec"]["deduplication"]["previousRemediationRequestRef"], old.as_str(), "{new_cr:#}");
    // A resolution of an incident that never fired has no CR to go to.
    let (status, unknown) =
        gw.post_prometheus(&webhook(&[Alert::resolved("OOMKilled").in_ns("prod").pod("worker-9")])).await;
    assert_eq!((status, outcome(&unknown)), (202, "resolved_unknown"), "{unknown}");
    settles_at(&gw, 2, 2).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_late_resolution_reaches_the_finished_cr_embedded() {
    a_late_resolution_reaches_the_finished_cr(Backend::Embedded).await;
}

#[tokio::test]
async fn a_late_resolution_reaches_the_finished_cr_redis_and_kube() {
    a_late_resolution_reaches_the_finished_cr(Backend::RedisAndKube).await;
}

/// A RemediationRequest as the replaced gateway wrote it (reference §7.2): its name
/// `rr-<fp[:12]>-<unix s>`, its labels (`managed-by: gateway-service`), one occurrence.
fn old_gateway_cr(alertname: &str, namespace: &str, pod: &str, created_s: i64) -> Value {
    let fp = breakwater_signal::fingerprint_of(&[alertname, namespace, "Pod", pod]);
    let at = jiff::Timestamp::from_second(created_s).expect("a time").to_string();
    serde_json::json!({
        "apiVersion": "remediation.kubernaut.io/v1alpha1",
        "kind": "RemediationRequest",
        "metadata": {
            "name": format!("rr-{}-{created_s}", &fp[..12]),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "gateway-service",
                "app.kubernetes.io/component": "remediation",
                "kubernaut.io/signal-type": "prometheus",
                "kubernaut.io/signal-fingerprint": &fp[..63],
                "kubernaut.io/severity": "critical",
                "kubernaut.io/environment": "production",
                "kubernaut.io/priority": "P0",
            },
            "annotations": {"kubernaut.io/created-at": at},
        },
        "spec": {
            "signalFingerprint": fp,
            "signalName": alertname,
            "severity": "critical",
            "environment": "production",
            "priority": "P0",
            "signalType": "prometheus",
            "signalSource": "prometheus-adapter",
            "targetType": "kubernetes",
            "firingTime": at,
            "receivedTime": at,
            "deduplication": {"isDuplicate": false, "firstSeen": at, "lastSeen": at, "occurrenceCount": 1},
            "signalLabels": {"alertname": alertname, "namespace": namespace, "pod": pod},
        },
    })
}

/// Cut-over: CRs the replaced gateway wrote are adopted. A repeat of an incident whose old
/// CR is open (in progress) counts on it; one whose old CR finished long ago opens a new CR
/// pointing at it. Nothing else is created.
async fn a_cut_over_adopts_the_old_gateways_crs(backend: Backend) {
    let mut gw = TestGateway::start(backend).await;
    let created_s = breakwater_signal::Clock::now(&breakwater_signal::SystemClock) / 1000 - 3600;
    let open = old_gateway_cr("HighLatency", "shop", "web-1", created_s);
    let done = old_gateway_cr("HighLatency", "shop", "web-2", created_s);
    for cr in [&open, &done] {
        gw.put_remediation(cr).await;
    }
    let name = |cr: &Value| cr["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    gw.set_status("shop", &name(&open), serde_json::json!({"overallPhase": "Executing"})).await;
    gw.set_status("shop", &name(&done), finished("Completed", 1_800_000)).await;

    let (status, answer) =
        gw.post_prometheus(&webhook(&[Alert::firing("HighLatency").in_ns("shop").pod("web-1")])).await;
    assert_eq!((status, outcome(&answer)), (202, "duplicate"), "{answer}");
    assert_eq!(cr_name(&answer), name(&open), "counted on the old gateway's open CR");
    let (status, repeat) =
        gw.post_prometheus(&webhook(&[Alert::firing("HighLatency").in_ns("shop").pod("web-1")])).await;
    assert_eq!((status, cr_name(&repeat)), (202, name(&open)), "dedup counts there too: {repeat}");
    let (status, other) =
        gw.post_prometheus(&webhook(&[Alert::firing("HighLatency").in_ns("shop").pod("web-2")])).await;
    assert_eq!((status, outcome(&other)), (201, "created"), "{other}");
    // The two old CRs' one occurrence each, the two repeats and the new CR.
    settles_at(&gw, 5, 3).await;
    let adopted = gw.remediation("shop", &name(&open)).expect("the adopted CR");
    assert_eq!(adopted["spec"]["deduplication"]["occurrenceCount"], 3, "{adopted:#}");
    let new = gw.remediation("shop", &cr_name(&other)).expect("the new CR");
    assert_eq!(new["spec"]["deduplication"]["previousRemediationRequestRef"], name(&done).as_str(), "{new:#}");
    gw.stop().await;
}

#[tokio::test]
async fn a_cut_over_adopts_the_old_gateways_crs_embedded() {
    a_cut_over_adopts_the_old_gateways_crs(Backend::Embedded).await;
}

#[tokio::test]
async fn a_cut_over_adopts_the_old_gateways_crs_redis_and_kube() {
    a_cut_over_adopts_the_old_gateways_crs(Backend::RedisAndKube).await;
}

/// Cut-over at scale: `BREAKWATER_ADOPTION_CRS` (default 200, to keep the suite quick; the
/// README's numbers are for 1,000 and 10,000) open CRs of the old gateway, each of a distinct alert (distinct alertnames, so no
/// storm folds them), then one repeat of every incident, 100 alerts a webhook, 4 webhooks at a
/// time: every repeat counts on its old CR and no CR is created. Prints how long it took.
async fn adoption_of_old_crs_measured(backend: Backend) {
    use futures::StreamExt as _;

    let n: usize = std::env::var("BREAKWATER_ADOPTION_CRS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let mut gw = TestGateway::start_with(backend, |c| {
        c.ratelimit.burst = 10_000_000;
        c.ratelimit.signals_per_second = 10_000_000.0;
        // A debug build on a busy 2-core machine: this test measures, it does not race deadlines.
        c.edge.component_timeout_ms = 60_000;
        c.edge.request_timeout_ms = 120_000;
    })
    .await;
    let created_s = breakwater_signal::Clock::now(&breakwater_signal::SystemClock) / 1000 - 3600;
    let alertname = |i: usize| format!("Adopted{i}");
    let started = std::time::Instant::now();
    futures::stream::iter((0..n).map(|i| old_gateway_cr(&alertname(i), "shop", "web", created_s)))
        .for_each_concurrent(16, |cr| {
            let gw = &gw;
            async move { gw.put_remediation(&cr).await }
        })
        .await;
    let put = started.elapsed();

    let started = std::time::Instant::now();
    let bodies: Vec<Value> = (0..n)
        .collect::<Vec<_>>()
        .chunks(100)
        .map(|chunk| {
            webhook(&chunk.iter().map(|i| Alert::firing(&alertname(*i)).in_ns("shop").pod("web")).collect::<Vec<_>>())
        })
        .collect();
    let answers: Vec<(u16, Value)> =
        futures::stream::iter(bodies.iter().map(|body| gw.post_prometheus(body))).buffer_unordered(4).collect().await;
    let answered = started.elapsed();
    for (status, answer) in &answers {
        assert_eq!(*status, 202, "{answer}");
        let results = answer["results"].as_array().expect("results");
        assert!(results.iter().all(|r| r["outcome"] == "duplicate"), "{answer}");
    }
    assert_eventually!(
        Duration::from_secs(600),
        async {
            let all = gw.remediations();
            accounted_alerts(&all) == 2 * n as u64 && all.len() == n
        },
        "{} alerts on {} CRs, want {} on {n}",
        accounted_alerts(&gw.remediations()),
        gw.remediations().len(),
        2 * n
    );
    let settled = started.elapsed();
    if let Some(api) = &gw.fake_api {
        // The lookups were answered by crd-writer's index of its watch, not by lists.
        let lists = api.count(breakwater_testkit::Verb::List);
        assert!(lists < 10, "{lists} lists for {n} lookups");
    }
    println!(
        "adoption of {n} old CRs, {backend:?}: their first repeats answered in {:.1} s, every count written in {:.1} s \
         ({:.0} incidents/s); putting the old CRs took {:.1} s",
        answered.as_secs_f64(),
        settled.as_secs_f64(),
        n as f64 / settled.as_secs_f64(),
        put.as_secs_f64()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_of_old_crs_measured_embedded() {
    adoption_of_old_crs_measured(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_of_old_crs_measured_redis_and_kube() {
    adoption_of_old_crs_measured(Backend::RedisAndKube).await;
}
