//! Exact under every fault: split mode on one Redis, each process killed with
//! SIGKILL in turn under mixed load (new incidents, repeats, a storm,
//! resolutions) and restarted on its address. Senders behave like
//! Alertmanager: they retry the same body on a 5xx, a 429, a connection error
//! or a timeout until they get a 2xx. Once every notification has its 2xx and
//! the system has settled, every firing alert is counted exactly once over all
//! CRs, and every incident has exactly one CR.
//!
//! Each process also has a canary incident, opened at the start and repeated once right before
//! that process is killed: the last answer before a SIGKILL must count for good too.
//! `FAULTS_KILL=dedup,edge` (a comma-separated subset of `ratelimit,dedup,storm,crd-writer,edge`)
//! kills only those, to find which kill breaks the invariant. A failure prints the outages, the
//! expected and accounted totals, and for each CR that differs every delivery of its alerts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::{SplitMode, accounted, cr_count, is_storm};
use breakwater_signal::{Clock, SystemClock};
use serde_json::{Value, json};

/// Concurrent Alertmanager-like senders.
const SENDERS: usize = 4;
/// Pause between one sender's notifications (after its 2xx).
const PACE: Duration = Duration::from_millis(120);
/// Notifications each sender still sends after the last restart.
const TAIL: usize = 10;
/// At most this many notifications per sender, whatever happens.
const MAX_NOTIFICATIONS: usize = 200;
/// How long a sender retries one notification before it gives up.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// How long a killed process stays down.
const DOWN_FOR: Duration = Duration::from_millis(750);
/// Healthy time between two kills, and before the first.
const HEALTHY_FOR: Duration = Duration::from_millis(1_000);
/// crd-writer's flush interval.
const FLUSH_MS: u64 = 100;
/// Alertnames of each sender's incident groups: 4 pods each, fewer than the pattern threshold.
const INCIDENT_GROUPS: [&str; 3] = ["HighMemory", "DiskPressure", "HighLatency"];
const PODS_PER_GROUP: usize = 4;
/// The storm: one (namespace, alertname) that every sender feeds with pods of its own.
const STORM_NAMESPACE: &str = "faults-storm";
const STORM_ALERT: &str = "PodCrashLooping";
const STORM_PODS_PER_SENDER: usize = 10;
/// Where the canary incidents live: one per process, repeated right before its kill.
const CANARY_NAMESPACE: &str = "faults-canary";
/// The kill order.
const KILL_ORDER: [&str; 5] = ["ratelimit", "dedup", "storm", "crd-writer", "edge"];

/// One alert of a notification, as the test tracks it.
#[derive(Debug, Clone)]
struct SentAlert {
    /// `namespace/alertname/pod`.
    key: String,
    firing: bool,
    storm_group: bool,
}

/// One try of a notification.
#[derive(Debug, Clone)]
struct Attempt {
    /// Seconds since the test started.
    at: f64,
    /// The HTTP status, or the transport error.
    answer: Result<u16, String>,
    body: Value,
}

/// One notification and everything its sender saw.
#[derive(Debug, Clone)]
struct Notification {
    sender: usize,
    seq: usize,
    alerts: Vec<SentAlert>,
    attempts: Vec<Attempt>,
}

impl Notification {
    fn final_2xx(&self) -> Option<&Attempt> {
        self.attempts.iter().rev().find(|a| a.answer.as_ref().is_ok_and(|s| (200..300).contains(s)))
    }
}

/// xorshift64*: deterministic load without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// Alertmanager's fingerprint of a label set: an opaque 16-hex-digit hash (FNV-1a here).
fn am_fingerprint(key: &str) -> String {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

/// A distinct `startsAt` for every firing episode or delivery, so each is a delivery of its own.
fn next_starts_at(counter: &AtomicU64) -> String {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let (h, m, s) = (6 + n / 3600, (n / 60) % 60, n % 60);
    format!("2026-12-01T{h:02}:{m:02}:{s:02}Z")
}

/// What one sender knows about its own alerts: which are firing, since when.
struct SenderState {
    id: usize,
    rng: Rng,
    /// `key` → the `startsAt` of its current firing episode, for the open ones.
    open: HashMap<String, String>,
    storm_pods: usize,
}

impl SenderState {
    fn alert(key: &str, status: &str, starts_at: &str) -> Value {
        let mut parts = key.splitn(3, '/');
        let (ns, name, pod) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        json!({
            "status": status,
            "labels": {"alertname": name, "namespace": ns, "pod": pod, "severity": "critical"},
            "annotations": {"summary": format!("{pod} is in trouble")},
            "startsAt": starts_at,
            "endsAt": if status == "resolved" { "2026-12-01T23:00:00Z" } else { "0001-01-01T00:00:00Z" },
            "generatorURL": "http://prometheus.local/graph",
            "fingerprint": am_fingerprint(key),
        })
    }

    /// The next notification: one group, 1 to 3 of its alerts. Incident groups get new
    /// incidents, repeats (a new `startsAt`, so a new delivery) and resolutions; the
    /// storm group gets new pods and repeats.
    fn next(&mut self, starts: &AtomicU64) -> (Value, Vec<SentAlert>) {
        let storm = self.rng.below(10) < 3;
        let (ns, alertname) = if storm {
            (STORM_NAMESPACE.to_owned(), STORM_ALERT)
        } else {
            (format!("faults-{}", self.id), INCIDENT_GROUPS[self.rng.below(INCIDENT_GROUPS.len())])
        };
        let count = 1 + self.rng.below(3);
        let mut pods = BTreeSet::new();
        for _ in 0..count {
            let pod = if storm {
                if self.storm_pods < STORM_PODS_PER_SENDER && (self.storm_pods == 0 || self.rng.below(2) == 0) {
                    self.storm_pods += 1;
                    format!("crash-{}-{}", self.id, self.storm_pods - 1)
                } else {
                    format!("crash-{}-{}", self.id, self.rng.below(self.storm_pods))
                }
            } else {
                format!("{}-{}", alertname.to_lowercase(), self.rng.below(PODS_PER_GROUP))
            };
            pods.insert(pod);
        }
        let mut alerts = Vec::new();
        let mut sent = Vec::new();
        for pod in pods {
            let key = format!("{ns}/{alertname}/{pod}");
            let resolve = !storm && self.open.contains_key(&key) && self.rng.below(5) == 0;
            if resolve {
                let starts_at = self.open.remove(&key).unwrap_or_default();
                alerts.push(Self::alert(&key, "resolved", &starts_at));
            } else {
                let starts_at = next_starts_at(starts);
                self.open.insert(key.clone(), starts_at.clone());
                alerts.push(Self::alert(&key, "firing", &starts_at));
            }
            sent.push(SentAlert { key, firing: !resolve, storm_group: storm });
        }
        let group_key = format!("{{}}:{{alertname=\"{alertname}\", namespace=\"{ns}\"}}");
        let status = if sent.iter().any(|a| a.firing) { "firing" } else { "resolved" };
        let body = json!({
            "version": "4",
            "groupKey": group_key,
            "truncatedAlerts": 0,
            "status": status,
            "receiver": "breakwater",
            "groupLabels": {"alertname": alertname, "namespace": ns},
            "commonLabels": {"alertname": alertname, "namespace": ns},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager.local",
            "alerts": alerts,
        });
        (body, sent)
    }
}

/// Posts `body` as Alertmanager does: the same body again after a 5xx, a 429, a connection
/// error or a timeout, with a short backoff, for up to [`RETRY_FOR`].
async fn deliver(client: &reqwest::Client, url: &str, body: &Value, started: Instant) -> Vec<Attempt> {
    let deadline = Instant::now() + RETRY_FOR;
    let mut attempts = Vec::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        let at = started.elapsed().as_secs_f64();
        let attempt = match client.post(url).json(body).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                Attempt { at, answer: Ok(status), body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
            }
            Err(err) => Attempt { at, answer: Err(format!("{err:?}")), body: Value::Null },
        };
        let retry = match attempt.answer {
            Ok(status) => status == 429 || status >= 500,
            Err(_) => true,
        };
        attempts.push(attempt);
        if !retry || Instant::now() >= deadline || attempts.len() >= 500 {
            return attempts;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

/// `name`, with the time its `-<unix ms>` suffix means in seconds since the test started: the
/// incident's first sighting, or for a name made without dedup, the start of its fallback window.
fn with_time(name: &str, started_ms: i64) -> String {
    match name.rsplit_once('-').and_then(|(_, ms)| ms.parse::<i64>().ok()) {
        Some(ms) if ms > 1_000_000_000_000 => {
            format!("{name} (named for t={:.2} s)", (ms - started_ms) as f64 / 1000.0)
        }
        _ => name.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_counts_once_when_each_process_is_killed_in_turn() {
    let started = Instant::now();
    let started_ms = SystemClock.now();
    let env: Vec<(String, String)> = vec![
        // Far above this load: ratelimit never refuses, in the service or in the edge's fallback.
        ("BREAKWATER_RATELIMIT__SIGNALS_PER_SECOND".into(), "100000".into()),
        ("BREAKWATER_RATELIMIT__BURST".into(), "1000000".into()),
        // Pattern storms only: an incident group (4 pods) never storms, the storm group does.
        ("BREAKWATER_STORM__RATE_THRESHOLD".into(), "100000".into()),
        ("BREAKWATER_STORM__PATTERN_THRESHOLD".into(), "5".into()),
        ("BREAKWATER_CRD_WRITER__FLUSH_INTERVAL_MS".into(), FLUSH_MS.to_string()),
    ];
    let mut split = SplitMode::start("faults", &env, 1).await;
    let url = split.webhook_url(0);
    let starts = Arc::new(AtomicU64::new(0));

    // A canary incident per process, opened now and repeated once right before that process is
    // killed: the last answer before a SIGKILL must count for good, like every other.
    let canary_client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let mut canaries: Vec<Notification> = Vec::new();
    let canary = |seq: usize, name: &str| {
        let key = format!("{CANARY_NAMESPACE}/Canary/canary-{name}");
        let body = json!({
            "version": "4", "groupKey": format!("{{}}:{{alertname=\"Canary\", pod=\"canary-{name}\"}}"),
            "status": "firing", "receiver": "breakwater", "externalURL": "http://alertmanager.local",
            "alerts": [SenderState::alert(&key, "firing", &next_starts_at(&starts))],
        });
        let alerts = vec![SentAlert { key, firing: true, storm_group: false }];
        (body, Notification { sender: SENDERS, seq, alerts, attempts: Vec::new() })
    };
    for name in KILL_ORDER {
        let (body, mut notification) = canary(canaries.len(), name);
        notification.attempts = deliver(&canary_client, &url, &body, started).await;
        canaries.push(notification);
    }

    // The senders.
    let kills_done = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for id in 0..SENDERS {
        let (kills_done, starts, url) = (kills_done.clone(), starts.clone(), url.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
            let mut state = SenderState {
                id,
                rng: Rng(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1)),
                open: HashMap::new(),
                storm_pods: 0,
            };
            let mut sent: Vec<Notification> = Vec::new();
            let mut tail = 0;
            for seq in 0..MAX_NOTIFICATIONS {
                if kills_done.load(Ordering::Relaxed) {
                    tail += 1;
                    if tail > TAIL {
                        break;
                    }
                }
                let (body, alerts) = state.next(&starts);
                let attempts = deliver(&client, &url, &body, started).await;
                let notification = Notification { sender: id, seq, alerts, attempts };
                let done = notification.final_2xx().is_some();
                sent.push(notification);
                if !done {
                    // Its fate is unknown, so the sender's model of what is open is too: stop here.
                    break;
                }
                tokio::time::sleep(PACE).await;
            }
            sent
        }));
    }

    // Kill each process in turn under that load, and restart it on its address.
    let mut outages: Vec<(String, f64, f64, f64)> = Vec::new();
    tokio::time::sleep(HEALTHY_FOR).await;
    // `FAULTS_KILL=dedup,edge` narrows the kills down, to find which one breaks the invariant.
    let only = std::env::var("FAULTS_KILL").ok();
    let kills: Vec<&str> =
        KILL_ORDER.into_iter().filter(|k| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == *k))).collect();
    assert!(!kills.is_empty(), "FAULTS_KILL={only:?} names none of {KILL_ORDER:?}");
    for &name in &kills {
        let (body, mut notification) = canary(canaries.len(), name);
        notification.attempts = deliver(&canary_client, &url, &body, started).await;
        canaries.push(notification);
        let down = started.elapsed().as_secs_f64();
        split.component(name).kill_9().await;
        tokio::time::sleep(DOWN_FOR).await;
        split.component(name).restart().await;
        let up = started.elapsed().as_secs_f64();
        let serving = up + split.wait_all_serving(&format!("restarting {name}")).await;
        outages.push((name.to_owned(), down, up, serving));
        tokio::time::sleep(HEALTHY_FOR).await;
    }
    kills_done.store(true, Ordering::Relaxed);

    let mut notifications = canaries;
    for sender in senders {
        let sent = tokio::time::timeout(Duration::from_secs(90), sender)
            .await
            .expect("senders finish within 90 s")
            .expect("sender task");
        notifications.extend(sent);
    }
    let load_done = started.elapsed().as_secs_f64();
    let mut timeline = String::new();
    for (name, down, up, serving) in &outages {
        let _ = writeln!(
            timeline,
            "  {name:<10} killed at {down:6.2} s, restarted at {up:6.2} s, all serving at {serving:6.2} s"
        );
    }

    // Every notification got its 2xx, and every answer is one the README allows.
    let mut problems = Vec::new();
    for n in notifications.iter().filter(|n| n.final_2xx().is_none()) {
        let last = n.attempts.last().map(|a| format!("{:?} {}", a.answer, a.body)).unwrap_or_default();
        problems.push(format!(
            "sender {} notification {} never got a 2xx in {} attempts; last: {last}",
            n.sender,
            n.seq,
            n.attempts.len()
        ));
    }
    assert!(problems.is_empty(), "{}\nouttages:\n{timeline}", problems.join("\n"));

    // Expected: one count per firing delivery (each has a startsAt of its own). Per CR: the
    // deliveries that the final answers place on it.
    let mut expected = 0_u64;
    let mut expected_per_cr: BTreeMap<String, u64> = BTreeMap::new();
    let mut placed_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unplaced = Vec::new();
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut fingerprints: HashMap<String, String> = HashMap::new();
    let mut resolved_keys: BTreeSet<String> = BTreeSet::new();
    let mut storm_keys: BTreeSet<String> = BTreeSet::new();
    let (mut posts, mut retried) = (0, 0);
    for n in &notifications {
        posts += n.attempts.len();
        retried += usize::from(n.attempts.len() > 1);
        let Some(answer) = n.final_2xx() else { continue };
        let results = answer.body["results"].as_array().cloned().unwrap_or_default();
        assert_eq!(results.len(), n.alerts.len(), "one result per alert: {}", answer.body);
        for (alert, result) in n.alerts.iter().zip(&results) {
            let outcome = result["outcome"].as_str().unwrap_or("");
            if let Some(fp) = result["fingerprint"].as_str() {
                fingerprints.insert(alert.key.clone(), fp.to_owned());
            }
            if alert.storm_group {
                storm_keys.insert(alert.key.clone());
            }
            let attempts: Vec<String> = n
                .attempts
                .iter()
                .map(|a| {
                    format!("{:.2}s:{}", a.at, a.answer.as_ref().map_or_else(|_| "err".to_owned(), u16::to_string))
                })
                .collect();
            let cr_name = result["remediationRequestName"].as_str().unwrap_or("");
            let count = result.get("occurrenceCount").or_else(|| result.get("stormAlertCount")).cloned();
            let trace = format!(
                "s{}#{} {} {} {outcome} count {} on {} attempts [{}]",
                n.sender,
                n.seq,
                alert.key,
                if alert.firing { "firing" } else { "resolved" },
                count.unwrap_or(Value::Null),
                with_time(cr_name, started_ms),
                attempts.join(" ")
            );
            by_key.entry(alert.key.clone()).or_default().push(trace.clone());
            if !alert.firing {
                resolved_keys.insert(alert.key.clone());
                assert!(
                    ["resolved", "resolved_unknown", "duplicate_delivery"].contains(&outcome),
                    "a resolution answered {outcome}: {result}"
                );
                continue;
            }
            assert!(
                ["created", "duplicate", "storm_created", "storm_aggregated", "duplicate_delivery"].contains(&outcome),
                "a firing alert answered {outcome}: {result}"
            );
            expected += 1;
            let ns = result["remediationRequestNamespace"].as_str().unwrap_or("");
            let name = result["remediationRequestName"].as_str().unwrap_or("");
            if name.is_empty() {
                unplaced.push(trace);
            } else {
                *expected_per_cr.entry(format!("{ns}/{name}")).or_default() += 1;
                placed_by.entry(format!("{ns}/{name}")).or_default().push(trace);
            }
        }
    }

    // Settle: crd-writer flushes; poll the CR files, bounded.
    let settle = Instant::now();
    let mut crs = split.crs(false);
    while accounted(&crs) != expected && settle.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        crs = split.crs(false);
    }
    // And it stays so: a few more flush intervals change nothing.
    tokio::time::sleep(Duration::from_millis(5 * FLUSH_MS)).await;
    crs = split.crs(true);
    let total = accounted(&crs);

    let mut report = String::new();
    let _ = writeln!(
        report,
        "{} notifications ({} retried, {posts} posts) by {SENDERS} senders; load done at {load_done:.2} s, settled at {:.2} s",
        notifications.len(),
        retried,
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(report, "outages:\n{timeline}");
    let _ = writeln!(report, "expected {expected} firing alerts counted, CRs account for {total} ({} CRs)", crs.len());
    for (cr_key, cr) in &crs {
        let want = expected_per_cr.get(cr_key).copied().unwrap_or(0);
        let got = cr_count(cr);
        if want != got {
            let _ = writeln!(
                report,
                "  CR {cr_key}{}: counts {got}, answers placed {want} there",
                if is_storm(cr) { " (storm)" } else { "" }
            );
            let keys: BTreeSet<&str> =
                placed_by.get(cr_key).into_iter().flatten().filter_map(|t| t.split(' ').nth(1)).collect();
            for trace in keys.iter().filter_map(|k| by_key.get(*k)).flatten() {
                let _ = writeln!(report, "      {trace}");
            }
        }
    }
    for (cr_key, want) in &expected_per_cr {
        if !crs.contains_key(cr_key) {
            let _ = writeln!(report, "  CR {cr_key}: missing, answers placed {want} there");
        }
    }
    for trace in &unplaced {
        let _ = writeln!(report, "  answered without a CR: {trace}");
    }

    // One CR per incident: a fingerprint never resolved has exactly one CR (storm pods: at
    // most one of their own), one storm CR for the storm group, and no storm elsewhere.
    let mut per_fingerprint: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut storm_crs = Vec::new();
    for (cr_key, cr) in &crs {
        if is_storm(cr) {
            storm_crs.push(cr_key.as_str());
        } else if let Some(fp) = cr["spec"]["signalFingerprint"].as_str() {
            per_fingerprint.entry(fp).or_default().push(cr_key.as_str());
        }
    }
    let mut incident_problems = Vec::new();
    for (key, fp) in &fingerprints {
        let own = per_fingerprint.get(fp.as_str()).cloned().unwrap_or_default();
        let bad = if storm_keys.contains(key) {
            own.len() > 1
        } else if resolved_keys.contains(key) {
            own.is_empty()
        } else {
            own.len() != 1
        };
        if bad {
            let own: Vec<String> = own.iter().map(|name| with_time(name, started_ms)).collect();
            let mut text = format!("  {key} ({fp}): CRs {own:?}");
            for trace in by_key.get(key).into_iter().flatten() {
                let _ = write!(text, "\n      {trace}");
            }
            incident_problems.push(text);
        }
    }
    incident_problems.sort();
    let storm_ok = storm_crs.len() == 1 && storm_crs[0].starts_with(&format!("{STORM_NAMESPACE}/"));
    if !incident_problems.is_empty() {
        let _ = writeln!(report, "incidents without exactly one CR:\n{}", incident_problems.join("\n"));
    }
    if !storm_ok {
        let _ = writeln!(report, "storm CRs: {storm_crs:?} (expected exactly one, in {STORM_NAMESPACE})");
    }
    println!("{report}");

    assert_eq!(total, expected, "every firing alert answered 2xx is counted exactly once\n{report}");
    assert!(incident_problems.is_empty() && storm_ok, "one CR per incident, one per storm\n{report}");
    // The load really was mixed and really met the faults.
    assert!(storm_keys.len() > 5 && !resolved_keys.is_empty(), "a storm and resolutions were sent\n{report}");
    // Only a crd-writer or edge outage is the sender's problem (503, or no answer).
    if kills.iter().any(|k| ["crd-writer", "edge"].contains(k)) {
        assert!(retried > 0, "some notifications were retried through the outages\n{report}");
    }
}
