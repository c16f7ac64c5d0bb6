//! TLS with a CA each test makes (rcgen): the edge over HTTPS, split mode with mutual TLS
//! between the edge and its components, `rediss://` to a redis-server serving TLS, and the
//! schemes that cannot be served refused at start.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::support::Component;
use breakwater_keyspace::{Keyspace, RedisConfig};
use breakwater_testkit::{OtlpReceiver, RedisServer, TestCa};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls;

fn utf8(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

fn vars(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

/// One HTTP/1.1 request over TLS, trusting only `ca`; the status and body.
async fn https(addr: &str, ca: &Path, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca)?;
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: rustls::pki_types::CertificateDer<'static> = cert.map_err(std::io::Error::other)?;
        roots.add(cert).map_err(std::io::Error::other)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let mut tls = connector.connect(name, tcp).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    // The edge may close without close_notify once it has answered.
    let _ = tls.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn webhook() -> String {
    json!({"version": "4", "status": "firing", "alerts": [{"status": "firing",
        "labels": {"alertname": "HighMemory", "namespace": "prod", "pod": "api-1"}}]})
    .to_string()
}

/// Polls the edge's `/readyz` over HTTPS until `want` (status) or 15 s.
async fn readyz_until(edge: &str, ca: &Path, want: u16) -> (u16, String) {
    let start = std::time::Instant::now();
    loop {
        let answer = https(edge, ca, "GET", "/readyz", "").await.unwrap_or((0, String::new()));
        if answer.0 == want || start.elapsed() > Duration::from_secs(15) {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_edge_serves_https_and_calls_its_components_over_mutual_tls() {
    let ca = TestCa::new();
    let server = ca.issue("server", &["localhost", "127.0.0.1"]);
    let client = ca.issue("edge-client", &["edge"]);
    let sink = tempfile::tempdir().expect("sink directory");
    // Every listener serves TLS and requires a client certificate the CA signed.
    let tls = vars(&[
        ("RUST_LOG", "warn".to_owned()),
        ("BREAKWATER_TLS__CERT_FILE", utf8(&server.cert_file)),
        ("BREAKWATER_TLS__KEY_FILE", utf8(&server.key_file)),
        ("BREAKWATER_TLS__CLIENT_CA_FILE", utf8(&ca.ca_file())),
    ]);
    let mut components = Vec::new();
    for name in ["ratelimit", "dedup", "storm"] {
        components.push(Component::start(name, &tls, &[]).await);
    }
    components.push(Component::start("crd-writer", &tls, &["--sink-dir".into(), utf8(sink.path())]).await);
    let mut edge_env = vars(&[
        ("RUST_LOG", "warn".to_owned()),
        // The edge's own listener: HTTPS, no client certificate asked of senders.
        ("BREAKWATER_TLS__CERT_FILE", utf8(&server.cert_file)),
        ("BREAKWATER_TLS__KEY_FILE", utf8(&server.key_file)),
        ("BREAKWATER_EDGE__COMPONENTS__CA_FILE", utf8(&ca.ca_file())),
    ]);
    for (key, component) in ["RATELIMIT", "DEDUP", "STORM", "CRD_WRITER"].iter().zip(&components) {
        // One by name, the others by IP address: the certificate names both.
        let host = if *key == "DEDUP" { component.addr().replace("127.0.0.1", "localhost") } else { component.addr() };
        edge_env.push((format!("BREAKWATER_EDGE__COMPONENTS__{key}"), format!("https://{host}")));
    }
    // Without a client certificate, every component refuses the edge.
    let anonymous = Component::start("edge", &edge_env, &[]).await;
    let mut with_cert = edge_env.clone();
    with_cert.push(("BREAKWATER_EDGE__COMPONENTS__CERT_FILE".into(), utf8(&client.cert_file)));
    with_cert.push(("BREAKWATER_EDGE__COMPONENTS__KEY_FILE".into(), utf8(&client.key_file)));
    let edge = Component::start("edge", &with_cert, &[]).await;

    let (status, ready) = readyz_until(&edge.addr(), &ca.ca_file(), 200).await;
    assert_eq!(status, 200, "the edge with a client certificate reaches every component: {ready}");
    assert!(!ready.contains("unavailable"), "{ready}");
    let (status, answer) =
        https(&edge.addr(), &ca.ca_file(), "POST", "/api/v1/signals/prometheus", &webhook()).await.expect("https");
    assert_eq!(status, 201, "a webhook over HTTPS, through every component over mutual TLS: {answer}");
    let written = std::fs::read_dir(sink.path().join("prod")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(written, 1, "one CR written by crd-writer behind TLS");

    let (status, ready) = https(&anonymous.addr(), &ca.ca_file(), "GET", "/readyz", "").await.expect("https");
    assert_eq!(status, 503, "components refuse an edge without a client certificate: {ready}");
    // Plain HTTP is not served where TLS is.
    let plain = reqwest::Client::new().get(format!("http://{}/healthz", edge.addr())).send().await;
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()), "no plain HTTP on the HTTPS port");
}

#[tokio::test]
async fn rediss_reaches_a_redis_serving_tls_with_the_ca_given() {
    let ca = TestCa::new();
    let server = ca.issue("redis", &["localhost", "127.0.0.1"]);
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let redis = RedisServer::builder()
        .option("tls-port", &tls_port.to_string())
        .option("tls-cert-file", &utf8(&server.cert_file))
        .option("tls-key-file", &utf8(&server.key_file))
        .option("tls-ca-cert-file", &utf8(&ca.ca_file()))
        .option("tls-auth-clients", "no")
        .start()
        .await;
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let config = RedisConfig {
        url: url.clone(),
        ca_file: Some(ca.ca_file()),
        connect_timeout_ms: 2000,
        ..RedisConfig::default()
    };
    let keyspace = Keyspace::from_config(&config, "dedup").expect("config");
    keyspace.probe_write().await.expect("a write over rediss:// with the test CA");
    // The system's CAs do not know the test CA: the same URL without ca_file cannot connect.
    let untrusted = Keyspace::from_config(&RedisConfig { ca_file: None, ..config }, "dedup").expect("config");
    assert!(untrusted.probe_write().await.is_err(), "a server certificate no trusted CA signed is refused");
    drop(redis);
}

/// `breakwater config check` with `env`: its exit status and what it printed.
async fn config_check(env: &[(&str, &str)]) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .args(["config", "check"])
        .envs(env.iter().copied())
        .output()
        .await
        .expect("breakwater runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[tokio::test]
async fn a_scheme_that_cannot_be_served_is_a_config_error_at_start() {
    let (ok, said) = config_check(&[("BREAKWATER_EDGE__COMPONENTS__DEDUP", "https://dedup:9102")]).await;
    assert!(!ok && said.contains("edge.components.ca_file"), "https:// without a CA: {said}");
    let (ok, said) = config_check(&[
        ("BREAKWATER_EDGE__COMPONENTS__DEDUP", "https://dedup:9102"),
        ("BREAKWATER_EDGE__COMPONENTS__CA_FILE", "/etc/ca.pem"),
    ])
    .await;
    assert!(!ok && said.contains("mixes http:// and https://"), "one https:// among http://: {said}");
    let (ok, said) = config_check(&[("BREAKWATER_TLS__CERT_FILE", "/etc/tls.crt")]).await;
    assert!(!ok && said.contains("tls.key_file"), "a certificate without its key: {said}");
    let (ok, said) = config_check(&[("BREAKWATER_TLS__CLIENT_CA_FILE", "/etc/ca.pem")]).await;
    assert!(!ok && said.contains("tls.client_ca_file"), "mutual TLS without a certificate: {said}");
    let (ok, said) =
        config_check(&[("BREAKWATER_DEDUP__STORE", "redis"), ("BREAKWATER_DEDUP__REDIS__URL", "redis+tls://h:6379")])
            .await;
    assert!(!ok && said.contains("dedup.redis.url"), "an unknown Redis scheme: {said}");
    // Served schemes pass: https:// everywhere with a CA, rediss://, an https:// collector.
    let (ok, said) = config_check(&[
        ("BREAKWATER_EDGE__COMPONENTS__RATELIMIT", "https://a:1"),
        ("BREAKWATER_EDGE__COMPONENTS__DEDUP", "https://a:2,https://b:2"),
        ("BREAKWATER_EDGE__COMPONENTS__STORM", "https://a:3"),
        ("BREAKWATER_EDGE__COMPONENTS__CRD_WRITER", "https://a:4"),
        ("BREAKWATER_EDGE__COMPONENTS__CA_FILE", "/etc/ca.pem"),
        ("BREAKWATER_DEDUP__STORE", "redis"),
        ("BREAKWATER_DEDUP__REDIS__URL", "rediss://h:6380"),
        ("BREAKWATER_TELEMETRY__OTLP_ENDPOINT", "https://collector:4317"),
    ])
    .await;
    assert!(ok, "{said}");
    // A TLS file that cannot be read stops the process at start, naming the key.
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_breakwater"))
            .args(["ratelimit", "--listen", "127.0.0.1:0"])
            .envs([
                ("BREAKWATER_TLS__CERT_FILE", "/nonexistent/tls.crt"),
                ("BREAKWATER_TLS__KEY_FILE", "/nonexistent/tls.key"),
            ])
            .output(),
    )
    .await
    .expect("exits at once")
    .expect("breakwater runs");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && said.contains("tls.cert_file"), "{said}");
}

/// Spans reach an `https://` collector whose certificate the test CA signed, given that CA.
/// `breakwater up` with `env`, after it answered one webhook 201 (its span then goes out).
async fn up_answering_one_webhook(
    env: &[(String, String)],
) -> (breakwater_testkit::BreakwaterProcess, tempfile::TempDir) {
    let sink = tempfile::tempdir().expect("sink directory");
    let up = breakwater_testkit::BreakwaterProcess::start(
        env!("CARGO_BIN_EXE_breakwater"),
        &["up", "--listen", "127.0.0.1:0", "--sink-dir", &utf8(sink.path())],
        env,
    )
    .await;
    let answer = reqwest::Client::new()
        .post(format!("{}/api/v1/signals/prometheus", up.url()))
        .header("content-type", "application/json")
        .body(webhook())
        .send()
        .await
        .expect("webhook");
    assert_eq!(answer.status().as_u16(), 201);
    (up, sink)
}

#[tokio::test]
async fn spans_reach_an_https_collector_with_the_ca_given() {
    let ca = TestCa::new();
    let receiver = OtlpReceiver::start_tls(&ca.issue("collector", &["localhost"])).await;
    let env = vars(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
        ("BREAKWATER_TELEMETRY__OTLP_CA_FILE", utf8(&ca.ca_file())),
    ]);
    let (up, _sink) = up_answering_one_webhook(&env).await;
    let start = std::time::Instant::now();
    while receiver.spans().is_empty() && start.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!receiver.spans().is_empty(), "spans arrived over TLS: {:#?}", up.stderr());
    assert!(receiver.endpoint().starts_with("https://"));

    // Without the CA, the system's CAs do not trust the collector: nothing arrives.
    let untrusted = OtlpReceiver::start_tls(&ca.issue("collector-2", &["localhost"])).await;
    let env =
        vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", untrusted.endpoint()), ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned())]);
    let (_up, _sink) = up_answering_one_webhook(&env).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(untrusted.spans().is_empty(), "no span reaches a collector no trusted CA vouches for");
}
