//! Alertmanager in HA: two real Alertmanager peers clustered over loopback gossip, each
//! delivering to its own edge of one split-mode deployment, both sent the same alerts (as
//! Prometheus sends every alert to every peer). Gossip is slow, so both peers deliver every
//! notification: the copies reach different edges and must count once. Then Breakwater answers
//! 503 for 20 s (crd-writer is down), both peers retry on their own, and the counts must still
//! be exact once it recovers.

use std::time::{Duration, Instant};

use crate::support::{SplitMode, accounted, cr_count};
use breakwater_testkit::{Alertmanager, prometheus};
use serde_json::{Value, json};

/// crd-writer's flush interval.
const FLUSH_MS: u64 = 100;
/// How long Breakwater answers 503.
const OUTAGE: Duration = Duration::from_secs(20);
/// How long the peers get to deliver, and Breakwater to settle, after each step.
const SETTLE: Duration = Duration::from_secs(60);

/// The sum of `name{integration="webhook"}` on a peer's own `/metrics`.
async fn peer_metric(peer: &Alertmanager, name: &str) -> f64 {
    prometheus::scrape(&format!("{}/metrics", peer.url())).await.sum(name, &[("integration", "webhook")])
}

/// Webhook requests a peer made that Breakwater answered 2xx.
async fn delivered(peer: &Alertmanager) -> f64 {
    peer_metric(peer, "alertmanager_notification_requests_total").await
        - peer_metric(peer, "alertmanager_notification_requests_failed_total").await
}

/// `breakwater_signals_total{outcome}` summed over every edge.
async fn edge_outcomes(split: &SplitMode, outcome: &str) -> f64 {
    let mut total = 0.0;
    for edge in &split.edges {
        total += prometheus::scrape(&format!("http://{}/metrics", edge.addr()))
            .await
            .sum("breakwater_signals_total", &[("outcome", outcome)]);
    }
    total
}

/// One firing alert per pod, with the `startsAt` Prometheus would send (the same to every peer).
fn alerts(alertname: &str, pods: &[&str], starts_at: &str) -> Value {
    Value::Array(
        pods.iter()
            .map(|pod| {
                json!({
                    "labels": {"alertname": alertname, "namespace": "ha", "pod": pod, "severity": "critical"},
                    "annotations": {"summary": format!("{pod} is in trouble")},
                    "startsAt": starts_at,
                })
            })
            .collect(),
    )
}

/// Waits until every CR is written and stays so: `want` CRs, each counting exactly one alert.
async fn assert_counted_once_each(split: &SplitMode, want: usize, what: &str) {
    let started = Instant::now();
    let exact =
        |crs: &std::collections::BTreeMap<String, Value>| crs.len() == want && crs.values().all(|cr| cr_count(cr) == 1);
    let mut crs = split.crs(false);
    while !exact(&crs) && started.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(200)).await;
        crs = split.crs(false);
    }
    // And it stays so: a few more flush intervals change nothing.
    tokio::time::sleep(Duration::from_millis(5 * FLUSH_MS)).await;
    let crs = split.crs(true);
    let counts: Vec<(&String, u64)> = crs.iter().map(|(name, cr)| (name, cr_count(cr))).collect();
    assert!(exact(&crs), "{what}: expected {want} CRs counting one alert each, got {counts:?}");
    assert_eq!(accounted(&crs), want as u64, "{what}: accounted == accepted alerts minus copies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clustered_peers_count_each_notification_once_through_an_outage() {
    let env: Vec<(String, String)> = vec![
        ("BREAKWATER_CRD_WRITER__FLUSH_INTERVAL_MS".into(), FLUSH_MS.to_string()),
        // Incidents only: a handful of pods never makes a storm here.
        ("BREAKWATER_STORM__PATTERN_THRESHOLD".into(), "50".into()),
        ("BREAKWATER_STORM__RATE_THRESHOLD".into(), "100000".into()),
    ];
    let mut split = SplitMode::start("ha-alertmanager", &env, 2).await;
    // Each alert its own group (the builder's default), delivered once per group: no
    // re-notification within the test.
    let peers = Alertmanager::builder("http://unused.invalid")
        .group_interval("1s")
        .repeat_interval("1h")
        .start_cluster(&[split.webhook_url(0), split.webhook_url(1)])
        .await;
    for peer in &peers {
        let members =
            prometheus::scrape(&format!("{}/metrics", peer.url())).await.sum("alertmanager_cluster_members", &[]);
        assert_eq!(members, 2.0, "the peers form one cluster over loopback gossip");
    }
    // Prometheus sends each alert's `startsAt`, so every peer has the same one.
    let starts_at = "2026-12-01T06:00:00Z";

    // Fair weather: both peers deliver each of four notifications, to different edges.
    let first = alerts("HaDiskPressure", &["db-0", "db-1", "db-2", "db-3"], starts_at);
    for peer in &peers {
        peer.post_alerts(&first).await;
    }
    let started = Instant::now();
    while (delivered(&peers[0]).await < 4.0 || delivered(&peers[1]).await < 4.0) && started.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (index, peer) in peers.iter().enumerate() {
        assert_eq!(delivered(peer).await, 4.0, "peer {index} delivered each notification itself; log:\n{}", peer.log());
    }
    assert_counted_once_each(&split, 4, "two peers, four notifications").await;
    assert_eq!(edge_outcomes(&split, "created").await, 4.0, "one copy of each notification counted");
    assert_eq!(edge_outcomes(&split, "duplicate_delivery").await, 4.0, "the other copy answered as one");

    // Outage: crd-writer down, so new incidents are answered 503, and both peers retry.
    let failed_before = [
        peer_metric(&peers[0], "alertmanager_notification_requests_failed_total").await,
        peer_metric(&peers[1], "alertmanager_notification_requests_failed_total").await,
    ];
    split.component("crd-writer").kill_9().await;
    let second = alerts("HaMemoryPressure", &["api-0", "api-1", "api-2", "api-3"], starts_at);
    for peer in &peers {
        peer.post_alerts(&second).await;
    }
    tokio::time::sleep(OUTAGE).await;
    for (index, peer) in peers.iter().enumerate() {
        let failed = peer_metric(peer, "alertmanager_notification_requests_failed_total").await;
        assert!(
            failed > failed_before[index] + 1.0,
            "peer {index} was answered 5xx and retried during the outage ({failed} failed requests); log:\n{}",
            peer.log()
        );
    }
    split.component("crd-writer").restart().await;
    split.wait_all_serving("crd-writer's restart").await;
    // Each of the four is delivered by at least one peer in the end; the other peer either
    // delivers its copy too or learns by gossip that it need not.
    let recovered = Instant::now();
    while delivered(&peers[0]).await + delivered(&peers[1]).await < 12.0 && recovered.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivered_after = delivered(&peers[0]).await + delivered(&peers[1]).await;
    assert!(delivered_after >= 12.0, "the retries were answered 2xx in the end ({delivered_after} deliveries)");
    // Late retries still in flight get time to arrive before the final count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_counted_once_each(&split, 8, "both peers retried through a 20 s outage").await;
}
