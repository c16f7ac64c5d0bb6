//! Hostile and slow clients against the real `breakwater` binary on real
//! sockets: slowloris, idle sockets past the file limit, slow bodies, odd
//! methods and paths, answers below the router, and a stop under load.
//!
//! Probe latencies are printed (`--nocapture` shows them); the asserted bound
//! is generous (`PROBE_BOUND`) so a loaded 2-core machine does not flake.

use std::path::Path;
use std::time::{Duration, Instant};

use breakwater_testkit::BreakwaterProcess as Process;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a probe must answer within here, under attack (the target is 100 ms).
const PROBE_BOUND: Duration = Duration::from_millis(1000);

/// `breakwater up` on a free port writing under `sink`, with `env` settings.
async fn up(sink: &Path, env: &[(&str, &str)]) -> Process {
    let sink = sink.to_str().expect("utf-8 path");
    let env: Vec<(String, String)> = env_of(env);
    Process::start(env!("CARGO_BIN_EXE_breakwater"), &["up", "--listen", "127.0.0.1:0", "--sink-dir", sink], &env).await
}

fn env_of(env: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    env.push(("RUST_LOG".to_owned(), "warn".to_owned()));
    env
}

/// One kubelet-like probe on a fresh connection: the status and how long it took.
async fn probe(addr: &str, path: &str) -> (u16, Duration) {
    let start = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let mut answer = Vec::new();
        // A refused connection is an answer too (status 0): the listener is closed.
        if let Ok(mut tcp) = TcpStream::connect(addr).await {
            let request = format!("GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n");
            if tcp.write_all(request.as_bytes()).await.is_ok() {
                let _ = tcp.read_to_end(&mut answer).await;
            }
        }
        answer
    })
    .await
    .unwrap_or_default();
    (status_of(&answer), start.elapsed())
}

/// The status code of a raw HTTP/1.1 answer (0 when there is none).
fn status_of(answer: &[u8]) -> u16 {
    String::from_utf8_lossy(answer).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Probes `/healthz` `n` times; asserts each answers 200 within `PROBE_BOUND`
/// and returns the slowest.
async fn probes_answer(addr: &str, n: usize, what: &str) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let (status, took) = probe(addr, "/healthz").await;
        assert_eq!(status, 200, "/healthz during {what}: status {status} after {took:?}");
        assert!(took < PROBE_BOUND, "/healthz during {what} took {took:?}");
        slowest = slowest.max(took);
    }
    eprintln!("{what}: slowest of {n} /healthz probes {slowest:?}");
    slowest
}

fn alert(alertname: &str, pod: &str) -> Value {
    json!({"status": "firing", "labels": {"alertname": alertname, "namespace": "prod", "pod": pod}})
}

async fn post_webhook(addr: &str, alerts: &[Value]) -> (u16, Value) {
    let body = json!({"version": "4", "status": "firing", "alerts": alerts});
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/signals/prometheus"))
        .timeout(Duration::from_secs(10))
        .json(&body)
        .send()
        .await
        .expect("edge answers the webhook");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The value of `breakwater_edge_limit_hits_total{limit}` in a `/metrics` text.
async fn limit_hits(addr: &str, limit: &str) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.expect("metrics").text().await.expect("text");
    let prefix = format!("breakwater_edge_limit_hits_total{{limit=\"{limit}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_and_probes_still_answer() {
    let dir = tempfile::tempdir().expect("sink");
    let gateway = up(dir.path(), &[("BREAKWATER_EDGE__HEADER_READ_TIMEOUT_MS", "1500")]).await;
    let addr = gateway.addr.clone();

    // 100 clients sending their headers at 1 byte per second.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut tcp = TcpStream::connect(&addr).await.expect("connect");
        tcp.write_all(b"POST /api/v1/signals/prometheus HTTP/1.1\r\nX-Slow: ").await.expect("write");
        slow.push(tcp);
    }
    let drip = tokio::spawn(async move {
        let mut closed = vec![None; slow.len()];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(8) && closed.iter().any(Option::is_none) {
            for (tcp, closed) in slow.iter_mut().zip(&mut closed) {
                if closed.is_none() && (tcp.write_all(b"a").await.is_err() || peer_closed(tcp).await) {
                    *closed = Some(start.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        closed
    });

    probes_answer(&addr, 10, "slowloris").await;
    let (status, answer) = post_webhook(&addr, &[alert("Slowloris", "web-1")]).await;
    assert_eq!(status, 201, "a normal webhook during slowloris: {answer}");

    let closed = drip.await.expect("drip task");
    let open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{open} of 100 slowloris connections still open after 8 s (header timeout 1.5 s)");
    let latest = closed.iter().flatten().max().copied().unwrap_or_default();
    eprintln!("slowloris: all 100 connections closed by the edge within {latest:?}");
    assert!(limit_hits(&addr, "header_timeout").await >= 100, "header timeouts are counted");
    let warned =
        gateway.stderr().iter().filter(|l| l.contains("edge limit reached") && l.contains("header_timeout")).count();
    assert_eq!(warned, 1, "one warning for the episode: {:#?}", gateway.stderr());
}

/// Whether the peer has closed `tcp` (a read that returns at once with EOF or an error).
async fn peer_closed(tcp: &mut TcpStream) -> bool {
    let mut buf = [0_u8; 256];
    match tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// 400 idle sockets against a process limited to 256 file descriptors, with `max_connections`
/// set; probes and a webhook still get through. Returns the hits of `limit`.
async fn idle_flood(max_connections: &str, limit: &str) -> u64 {
    let dir = tempfile::tempdir().expect("sink");
    let sink = dir.path().to_str().expect("utf-8 path");
    let binary = env!("CARGO_BIN_EXE_breakwater");
    let env = env_of(&[
        ("BREAKWATER_EDGE__MAX_CONNECTIONS", max_connections),
        ("BREAKWATER_EDGE__HEADER_READ_TIMEOUT_MS", "60000"),
    ]);
    let script = "ulimit -n 256 && exec \"$0\" \"$@\"";
    let args = ["-c", script, binary, "up", "--listen", "127.0.0.1:0", "--sink-dir", sink];
    let gateway = Process::start("sh", &args, &env).await;
    let addr = gateway.addr.clone();

    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    // Let the edge accept them all (and close the oldest to make room).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let what = format!("400 idle sockets, 256 file descriptors, max_connections {max_connections}");
    probes_answer(&addr, 10, &what).await;
    let (status, answer) = post_webhook(&addr, &[alert("IdleFlood", "web-1")]).await;
    assert_eq!(status, 201, "a normal webhook during the idle flood: {answer}");
    let hits = limit_hits(&addr, limit).await;
    eprintln!("{what}: {hits} hits of limit {limit}");
    let warned = gateway.stderr().iter().filter(|l| l.contains("edge limit reached") && l.contains(limit)).count();
    assert_eq!(warned, 1, "one warning for the episode: {:#?}", gateway.stderr());
    drop(idle);
    hits
}

#[tokio::test]
async fn idle_sockets_past_the_connection_cap_leave_room_for_probes() {
    let closed = idle_flood("100", "connections").await;
    assert!(closed >= 300, "idle connections closed to make room are counted: {closed}");
}

#[tokio::test]
async fn idle_sockets_past_the_file_limit_leave_room_for_probes() {
    // The cap is above the file limit: running out of descriptors closes idle connections too.
    let hits = idle_flood("4096", "accept").await;
    assert!(hits >= 1, "running out of file descriptors is counted: {hits}");
}

#[tokio::test]
async fn slow_bodies_hold_no_webhook_permit() {
    let dir = tempfile::tempdir().expect("sink");
    let env = [("BREAKWATER_EDGE__MAX_CONCURRENT_REQUESTS", "20"), ("BREAKWATER_EDGE__BODY_READ_TIMEOUT_MS", "2000")];
    let gateway = up(dir.path(), &env).await;
    let addr = gateway.addr.clone();

    // Twice as many slow bodies as webhook permits: headers, then 5 of 1,000 body bytes.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut tcp = TcpStream::connect(&addr).await.expect("connect");
        let head = "POST /api/v1/signals/prometheus HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n\
                    Content-Length: 1000\r\n\r\n{\"ver";
        tcp.write_all(head.as_bytes()).await.expect("write");
        slow.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    probes_answer(&addr, 10, "40 slow bodies").await;
    let (status, answer) = post_webhook(&addr, &[alert("SlowBodies", "web-1")]).await;
    assert_eq!(status, 201, "a normal webhook during slow bodies: {answer}");

    // Past the body timeout each slow sender gets a 408 with an RFC 7807 body.
    for mut tcp in slow {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "a slow body is answered after the body timeout");
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(status_of(&answer), 408, "{text}");
        assert!(text.contains("application/problem+json"), "{text}");
    }
    assert!(limit_hits(&addr, "body_timeout").await >= 40);
}

#[tokio::test]
async fn busy_connections_past_the_cap_leave_a_reserve_for_probes() {
    let dir = tempfile::tempdir().expect("sink");
    let env = [("BREAKWATER_EDGE__MAX_CONNECTIONS", "20"), ("BREAKWATER_EDGE__PROBE_CONNECTIONS", "4")];
    let gateway = up(dir.path(), &env).await;
    let addr = gateway.addr.clone();
    // 20 connections, each with a request in progress (a body that never completes): none
    // can be closed to make room.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut tcp = TcpStream::connect(&addr).await.expect("connect");
        let head = "POST /api/v1/signals/prometheus HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n\
                    Content-Length: 1000\r\n\r\n{";
        tcp.write_all(head.as_bytes()).await.expect("write");
        slow.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    probes_answer(&addr, 10, "20 busy connections, max_connections 20").await;
    // A webhook on a reserve connection is refused with an RFC 7807 503, not served.
    let request = "POST /api/v1/signals/prometheus HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n\
                   Content-Length: 2\r\nConnection: close\r\n\r\n{}";
    let answer = raw(&addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("application/problem+json"), "{answer}");
    assert!(limit_hits(&addr, "probe_only").await >= 11, "reserve connections are counted");
    drop(slow);
}

/// Sends `request` on a fresh connection and reads what comes back within 3 s.
async fn raw(addr: &str, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn every_answer_is_a_proper_answer() {
    let dir = tempfile::tempdir().expect("sink");
    let gateway = up(dir.path(), &[]).await;
    let addr = gateway.addr.clone();
    let url = format!("http://{addr}/api/v1/signals/prometheus");
    let client = reqwest::Client::new();
    let body = json!({"alerts": [alert("Proper", "web-1")]}).to_string();

    // 150 header fields: a 431 with an RFC 7807 body, not an empty one.
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-Field-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw(&addr, many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(answer.contains("application/problem+json") && answer.contains("\"status\":431"), "{answer}");

    // Below the router, hyper's own answers get an RFC 7807 body too: a garbage request
    // line, more header fields than hyper parses, a request target too long.
    let answer = raw(&addr, b"\x16\x03\x01 garbage\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("application/problem+json") && answer.contains("\"status\":400"), "{answer}");
    let mut flood = String::from("GET /healthz HTTP/1.1\r\nHost: edge\r\n");
    for i in 0..1000 {
        flood.push_str(&format!("X-Field-{i}: {i}\r\n"));
    }
    flood.push_str("\r\n");
    let answer = raw(&addr, flood.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(answer.contains("application/problem+json") && answer.contains("\"status\":431"), "{answer}");
    let long = format!("GET /{} HTTP/1.1\r\nHost: edge\r\n\r\n", "a".repeat(70_000));
    let answer = raw(&addr, long.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 414"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    // The connection after a normal answer still works: answers are only replaced when hyper
    // wrote them itself.
    let two =
        b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\nGET /healthz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n";
    let answer = raw(&addr, two).await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");

    // gzip is decoded.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, body.as_bytes()).expect("gzip");
    let gzipped = gz.finish().expect("gzip");
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzipped)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 201, "{}", response.text().await.unwrap_or_default());

    // A gzip body that decodes past its limit is refused, and another encoding is 415.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut bomb, &vec![b' '; 4 * 1024 * 1024]).expect("gzip");
    let bomb = bomb.finish().expect("gzip");
    let response =
        client.post(&url).header("content-type", "application/json").header("content-encoding", "gzip").body(bomb);
    let response = response.send().await.expect("answer");
    assert_eq!(response.status().as_u16(), 413);
    let response = client.post(&url).header("content-type", "application/json").header("content-encoding", "br");
    assert_eq!(response.body(body.clone()).send().await.expect("answer").status().as_u16(), 415);

    // A charset other than UTF-8 is refused, not misread.
    let response = client.post(&url).header("content-type", "application/json; charset=latin1").body(body.clone());
    let response = response.send().await.expect("answer");
    assert_eq!(response.status().as_u16(), 415);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let response = client.post(&url).header("content-type", "application/json; charset=UTF-8").body(body.clone());
    assert_eq!(response.send().await.expect("answer").status().as_u16(), 202, "UTF-8 is fine");

    // Expect: 100-continue over the limit: 413 at once, no 100 Continue first.
    let request = "POST /api/v1/signals/prometheus HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n\
                   Content-Length: 10485760\r\nExpect: 100-continue\r\n\r\n";
    let answer = raw(&addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue") && answer.contains("application/problem+json"), "{answer}");
}

/// The number of `breakwater_http_requests_total` series.
async fn http_series(addr: &str) -> usize {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.expect("metrics").text().await.expect("text");
    text.lines().filter(|l| l.starts_with("breakwater_http_requests_total{")).count()
}

#[tokio::test]
async fn odd_methods_and_paths_keep_the_series_count_flat() {
    let dir = tempfile::tempdir().expect("sink");
    let gateway = up(dir.path(), &[]).await;
    let addr = gateway.addr.clone();
    // One of each kind first, so the flood adds no new label values.
    raw(&addr, b"BREW0 /healthz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n").await;
    raw(&addr, b"BREW0 /x0 HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n").await;
    raw(&addr, b"GET /nowhere0 HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n").await;
    raw(&addr, b"GET /healthz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n").await;
    http_series(&addr).await; // the scrape itself is a series
    let before = http_series(&addr).await;
    let mut tcp = TcpStream::connect(&addr).await.expect("connect");
    for i in 1..=300 {
        let request =
            format!("BREW{i} /x{i} HTTP/1.1\r\nHost: edge\r\n\r\nGET /nowhere{i} HTTP/1.1\r\nHost: edge\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("write");
    }
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut answers = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answers)).await;
    let answered = String::from_utf8_lossy(&answers).matches("HTTP/1.1 ").count();
    assert_eq!(answered, 601, "every odd request was answered");
    let after = http_series(&addr).await;
    eprintln!("series of breakwater_http_requests_total: {before} before, {after} after 600 odd requests");
    assert_eq!(after, before, "series before the flood and after");
}

/// Every CR under `sink`, as JSON.
fn remediations(sink: &Path) -> Vec<Value> {
    let mut crs = Vec::new();
    for ns in std::fs::read_dir(sink).expect("sink dir").flatten() {
        if ns.file_name().to_string_lossy().starts_with('.') || !ns.path().is_dir() {
            continue;
        }
        for file in std::fs::read_dir(ns.path()).expect("namespace dir").flatten() {
            if file.file_name().to_string_lossy().ends_with(".yaml") {
                let text = std::fs::read_to_string(file.path()).expect("CR file");
                crs.push(serde_saphyr::from_str(&text).expect("CR YAML"));
            }
        }
    }
    crs
}

/// Alerts counted over all CRs (as `accounted_alerts` in the workspace tests).
fn accounted_alerts(crs: &[Value]) -> u64 {
    crs.iter()
        .map(|cr| {
            let spec = &cr["spec"];
            if spec["isStorm"].as_bool().unwrap_or(false) {
                spec["stormAlertCount"].as_u64().unwrap_or(0)
            } else {
                spec["deduplication"]["occurrenceCount"].as_u64().unwrap_or(0)
            }
        })
        .sum()
}

/// Webhook senders that run until the edge stops answering; the firing alerts answered 2xx.
fn load(addr: &str, senders: usize) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..senders)
        .map(|s| {
            let url = format!("http://{addr}/api/v1/signals/prometheus");
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut answered = 0;
                for i in 0_u64.. {
                    // Repeats of a few incidents, in several namespaces (no storm: few pods each).
                    let alerts: Vec<Value> = (0..3)
                        .map(|a| {
                            json!({"status": "firing", "labels": {"alertname": format!("Load{a}"),
                                   "namespace": format!("ns-{}", (s + a) % 4), "pod": format!("p-{}", i % 3)}})
                        })
                        .collect();
                    let sent = client.post(&url).json(&json!({"alerts": alerts})).send().await;
                    match sent {
                        Ok(r) if r.status().is_success() => answered += 3,
                        // Over the sender's rate (503, which a sender retries): go on.
                        Ok(r) if r.status().as_u16() == 503 => {
                            if !r.text().await.is_ok_and(|problem| problem.contains("errors/rate-limited")) {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
                answered
            })
        })
        .collect()
}

/// Opens a request whose body never completes, and one whose headers never do.
async fn half_sent(addr: &str) -> (TcpStream, TcpStream) {
    let mut body = TcpStream::connect(addr).await.expect("connect");
    let head = "POST /api/v1/signals/prometheus HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n\
                Content-Length: 1000\r\n\r\n{\"alerts\":";
    body.write_all(head.as_bytes()).await.expect("write");
    let mut headers = TcpStream::connect(addr).await.expect("connect");
    headers.write_all(b"POST /api/v1/signals/prometheus HTTP/1.1\r\nHost: ed").await.expect("write");
    (body, headers)
}

fn sigterm(process: &Process) {
    let pid = process.child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(sent.success(), "SIGTERM sent to {pid}");
}

/// Waits for the process to exit after SIGTERM; asserts exit code 0 and returns the time it took.
async fn exits_cleanly(process: &mut Process, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    let status = tokio::time::timeout(within, process.child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} still running {within:?} after SIGTERM: {:#?}", process.stderr()))
        .expect("wait");
    let took = start.elapsed();
    assert!(status.success(), "{what} exited with {status}: {:#?}", process.stderr());
    took
}

#[tokio::test]
async fn up_stops_under_load_within_its_deadline_and_counts_every_answered_alert() {
    let dir = tempfile::tempdir().expect("sink");
    let env = [("BREAKWATER_EDGE__SHUTDOWN_TIMEOUT_MS", "3000"), ("BREAKWATER_CRD_WRITER__FLUSH_INTERVAL_MS", "5000")];
    let mut gateway = up(dir.path(), &env).await;
    let addr = gateway.addr.clone();
    let _held = half_sent(&addr).await;
    let senders = load(&addr, 8);
    tokio::time::sleep(Duration::from_secs(1)).await;

    sigterm(&gateway);
    // Readiness fails as soon as the signal is handled (or the listener is gone already).
    let not_ready = async {
        while probe(&addr, "/readyz").await.0 == 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(2), not_ready).await.expect("/readyz fails after SIGTERM");
    let took = exits_cleanly(&mut gateway, Duration::from_secs(15), "up").await;
    eprintln!("up under load: exited 0 {took:?} after SIGTERM (deadline 3 s)");
    assert!(took < Duration::from_millis(3000 + 1500), "up took {took:?} to stop; its deadline is 3 s");

    let mut answered = 0;
    for sender in senders {
        answered += sender.await.expect("sender");
    }
    assert!(answered > 0, "the load was answered");
    // The flush interval is 5 s: the counts on disk are there because the last flush ran.
    let counted = accounted_alerts(&remediations(dir.path()));
    eprintln!("up under load: {answered} alerts answered 2xx, {counted} counted on CRs");
    assert_eq!(counted, answered, "alerts answered 2xx against alerts counted on CRs");
}

#[tokio::test]
async fn split_mode_processes_stop_under_load_within_their_deadline() {
    let dir = tempfile::tempdir().expect("sink");
    let sink = dir.path().to_str().expect("utf-8 path").to_owned();
    let start = |args: &'static [&'static str], extra: Vec<(String, String)>| {
        let mut env = env_of(&[]);
        env.extend(extra);
        async move { Process::start(env!("CARGO_BIN_EXE_breakwater"), args, &env).await }
    };
    let slow_flush = vec![("BREAKWATER_CRD_WRITER__FLUSH_INTERVAL_MS".to_owned(), "5000".to_owned())];
    let mut ratelimit = start(&["ratelimit", "--listen", "127.0.0.1:0"], vec![]).await;
    let mut dedup = start(&["dedup", "--listen", "127.0.0.1:0"], vec![]).await;
    let mut storm = start(&["storm", "--listen", "127.0.0.1:0"], vec![]).await;
    let mut env = env_of(&[]);
    env.extend(slow_flush);
    let mut crd_writer = Process::start(
        env!("CARGO_BIN_EXE_breakwater"),
        &["crd-writer", "--listen", "127.0.0.1:0", "--sink-dir", &sink],
        &env,
    )
    .await;
    let url = |p: &Process| format!("http://{}", p.addr);
    let edge_env = vec![
        ("BREAKWATER_EDGE__COMPONENTS__RATELIMIT".to_owned(), url(&ratelimit)),
        ("BREAKWATER_EDGE__COMPONENTS__DEDUP".to_owned(), url(&dedup)),
        ("BREAKWATER_EDGE__COMPONENTS__STORM".to_owned(), url(&storm)),
        ("BREAKWATER_EDGE__COMPONENTS__CRD_WRITER".to_owned(), url(&crd_writer)),
        ("BREAKWATER_EDGE__SHUTDOWN_TIMEOUT_MS".to_owned(), "3000".to_owned()),
    ];
    let mut edge = start(&["edge", "--listen", "127.0.0.1:0"], edge_env).await;
    let addr = edge.addr.clone();
    let _held = half_sent(&addr).await;
    let senders = load(&addr, 8);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The edge first, as a rolling update would; then each component, under the load's connections.
    sigterm(&edge);
    let took = exits_cleanly(&mut edge, Duration::from_secs(15), "edge").await;
    eprintln!("split mode under load: edge exited 0 {took:?} after SIGTERM (deadline 3 s)");
    assert!(took < Duration::from_millis(3000 + 1500), "edge took {took:?}; its deadline is 3 s");
    let mut answered = 0;
    for sender in senders {
        answered += sender.await.expect("sender");
    }
    assert!(answered > 0, "the load was answered");
    // Each component also has a client that opened an HTTP/2 connection and sent nothing
    // more: the graceful drain would wait for it for good; the drain deadline is 5 s.
    let mut idle_clients = Vec::new();
    for process in [&ratelimit, &dedup, &storm, &crd_writer] {
        let mut tcp = TcpStream::connect(&process.addr).await.expect("connect");
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.expect("write");
        idle_clients.push(tcp);
    }
    let stops =
        [(&mut ratelimit, "ratelimit"), (&mut dedup, "dedup"), (&mut storm, "storm"), (&mut crd_writer, "crd-writer")];
    for (process, _) in &stops {
        sigterm(process);
    }
    for (process, what) in stops {
        let took = exits_cleanly(process, Duration::from_secs(15), what).await;
        eprintln!("split mode: {what} exited 0 {took:?} after SIGTERM, with an idle HTTP/2 client");
        assert!(took < Duration::from_millis(5000 + 2000), "{what} took {took:?}; its drain deadline is 5 s");
    }
    drop(idle_clients);
    let counted = accounted_alerts(&remediations(dir.path()));
    eprintln!("split mode under load: {answered} alerts answered 2xx, {counted} counted on CRs");
    assert_eq!(counted, answered, "alerts answered 2xx against alerts counted on CRs");
}

#[tokio::test]
async fn a_corrupt_cr_file_is_moved_aside_and_its_counts_still_land() {
    let dir = tempfile::tempdir().expect("sink");
    let gateway = up(dir.path(), &[("BREAKWATER_CRD_WRITER__FLUSH_INTERVAL_MS", "100")]).await;
    let addr = gateway.addr.clone();
    let (status, first) = post_webhook(&addr, &[alert("Corrupted", "db-0")]).await;
    assert_eq!(status, 201, "{first}");
    let name = first["results"][0]["remediationRequestName"].as_str().expect("CR name").to_owned();
    let file = dir.path().join("prod").join(format!("{name}.yaml"));
    std::fs::write(&file, "spec: [this is not a remediation request").expect("corrupt the CR file");

    let (status, second) = post_webhook(&addr, &[alert("Corrupted", "db-0")]).await;
    assert_eq!((status, &second["results"][0]["occurrenceCount"]), (202, &json!(2)), "{second}");
    let rebuilt = async {
        loop {
            let cr: Option<Value> = std::fs::read_to_string(&file).ok().and_then(|t| serde_saphyr::from_str(&t).ok());
            if cr.as_ref().is_some_and(|cr| cr["spec"]["deduplication"]["occurrenceCount"] == 2) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), rebuilt).await.unwrap_or_else(|_| {
        panic!("CR {name} not rebuilt with both occurrences: {:#?}", gateway.stderr());
    });
    let aside: Vec<String> = std::fs::read_dir(dir.path().join("prod"))
        .expect("namespace dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{name}.yaml.corrupt-")))
        .collect();
    assert_eq!(aside.len(), 1, "the bad file is kept aside once: {aside:?}");
    let reported = gateway.stderr().iter().filter(|l| l.contains("moved aside")).count();
    assert_eq!(reported, 1, "reported once: {:#?}", gateway.stderr());
    let text = reqwest::get(format!("http://{addr}/metrics")).await.expect("metrics").text().await.expect("text");
    assert!(text.contains("breakwater_crd_sink_quarantined_total{reason=\"corrupt\"} 1"), "{text}");
}
