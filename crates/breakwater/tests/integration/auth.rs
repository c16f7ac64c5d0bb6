//! Authentication of the webhook routes (`edge.auth`), on the real binary (`breakwater up`):
//! the real Alertmanager sends its bearer token from a credentials file; static tokens come
//! from a directory, as from a mounted Secret; Kubernetes tokens are reviewed by the testkit's
//! fake API server through the edge's real kube client. A refused webhook records nothing,
//! and the authenticated identity is the rate-limit sender.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use breakwater_testkit::{Alertmanager, BreakwaterProcess, FakeApiServer, Fault, Verb, assert_eventually, prometheus};
use serde_json::{Value, json};

const SA: &str = "system:serviceaccount:monitoring:alertmanager";

/// `breakwater up` on a loopback port with `env`, writing CRs under `sink`.
async fn up(sink: &Path, env: &[(&str, String)]) -> BreakwaterProcess {
    let env: Vec<(String, String)> =
        [("RUST_LOG", "warn".to_owned())].iter().chain(env).map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    let sink = sink.to_str().expect("utf-8 path");
    BreakwaterProcess::start(
        env!("CARGO_BIN_EXE_breakwater"),
        &["up", "--listen", "127.0.0.1:0", "--sink-dir", sink],
        &env,
    )
    .await
}

/// An Alertmanager webhook with one firing alert for `pod`.
fn webhook(pod: &str) -> Value {
    json!({
        "version": "4", "status": "firing", "receiver": "r", "groupKey": format!("{{}}:{{pod=\"{pod}\"}}"),
        "commonLabels": {}, "commonAnnotations": {},
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "AuthTest", "namespace": "prod", "pod": pod},
            "annotations": {}, "startsAt": "2026-01-01T00:00:00Z",
        }],
    })
}

/// What a `POST /api/v1/signals/prometheus` got: status, `WWW-Authenticate`, `Retry-After`, body.
struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    retry_after: Option<String>,
    body: Value,
}

async fn post(client: &reqwest::Client, edge: &BreakwaterProcess, authorization: Option<&str>, pod: &str) -> Answer {
    let mut request = client.post(format!("{}/api/v1/signals/prometheus", edge.url())).json(&webhook(pod));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.expect("the edge answers");
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (www_authenticate, retry_after) = (header("www-authenticate"), header("retry-after"));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Answer { status, www_authenticate, retry_after, body }
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder().no_proxy().local_address(ip.parse::<IpAddr>().ok()).build().expect("client")
}

/// RemediationRequest files the directory sink wrote.
fn cr_files(sink: &Path) -> usize {
    let Ok(namespaces) = std::fs::read_dir(sink) else { return 0 };
    namespaces
        .flatten()
        .filter(|ns| !ns.file_name().to_string_lossy().starts_with('.') && ns.path().is_dir())
        .flat_map(|ns| std::fs::read_dir(ns.path()).into_iter().flatten().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "yaml"))
        .count()
}

async fn metric(edge: &BreakwaterProcess, name: &str, labels: &[(&str, &str)]) -> f64 {
    prometheus::scrape(&edge.metrics_url()).await.sum(name, labels)
}

/// Static tokens from a Secret-like directory: refusals, the real Alertmanager, the identity as
/// the rate-limit key, and a rotated token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_tokens_admit_alertmanager_refuse_the_rest_and_key_the_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, sink) = (dir.path().join("tokens"), dir.path().join("crs"));
    std::fs::create_dir(&tokens).unwrap();
    for (name, token) in [("alertmanager", "token-am"), ("ci", "token-ci"), ("other", "token-other")] {
        std::fs::write(tokens.join(name), format!("{token}\n")).unwrap();
    }
    let edge = up(
        &sink,
        &[
            ("BREAKWATER_EDGE__AUTH__MODE", "static".into()),
            ("BREAKWATER_EDGE__AUTH__TOKEN_FILES", format!("[{:?}]", tokens.to_str().unwrap())),
            ("BREAKWATER_EDGE__AUTH__TOKEN_RELOAD_SECS", "1".into()),
            // Three signals per sender, hardly refilled: the bucket shows who the sender is.
            ("BREAKWATER_RATELIMIT__BURST", "3".into()),
            ("BREAKWATER_RATELIMIT__SIGNALS_PER_SECOND", "0.001".into()),
        ],
    )
    .await;
    let local = client_from("127.0.0.1");

    // No token, a wrong one, another scheme: 401 with RFC 7807 and WWW-Authenticate; nothing recorded.
    let missing = post(&local, &edge, None, "p0").await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert_eq!(missing.www_authenticate.as_deref(), Some("Bearer realm=\"breakwater\""));
    assert_eq!(missing.body["type"], "https://kubernaut.io/errors/unauthorized");
    assert_eq!(missing.body["detail"], "an Authorization: Bearer token is required");
    let wrong = post(&local, &edge, Some("Bearer token-a"), "p0").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.www_authenticate.as_deref(), Some("Bearer realm=\"breakwater\", error=\"invalid_token\""));
    assert_eq!(post(&local, &edge, Some("Basic dG9rZW4tYW0="), "p0").await.status, 401);
    // Probes and /metrics need no token.
    for path in ["/healthz", "/readyz", "/health", "/ready", "/metrics"] {
        let status = local.get(format!("{}{path}", edge.url())).send().await.unwrap().status().as_u16();
        assert_eq!(status, 200, "{path}");
    }
    assert_eq!(metric(&edge, "breakwater_signals_received_total", &[]).await, 0.0, "refused webhooks are not read");
    assert_eq!(metric(&edge, "breakwater_auth_failures_total", &[("reason", "missing")]).await, 2.0);
    assert_eq!(metric(&edge, "breakwater_auth_failures_total", &[("reason", "invalid")]).await, 1.0);
    assert_eq!(cr_files(&sink), 0);

    // The real Alertmanager, with the token in its credentials file.
    let alertmanager = Alertmanager::builder(&format!("{}/api/v1/signals/prometheus", edge.url()))
        .bearer_token("token-am")
        .start()
        .await;
    alertmanager
        .post_alerts(&json!([{ "labels": { "alertname": "AuthTest", "namespace": "prod", "pod": "am-1" } }]))
        .await;
    assert_eventually!(
        Duration::from_secs(15),
        async { cr_files(&sink) == 1 },
        "Alertmanager's alert became a CR; its log:\n{}",
        alertmanager.log()
    );

    // token:ci spends its three signals; from another address it is still token:ci.
    for pod in ["c1", "c2", "c3"] {
        let answer = post(&local, &edge, Some("Bearer token-ci"), pod).await;
        assert!(matches!(answer.status, 201 | 202), "{pod}: {} {}", answer.status, answer.body);
    }
    let over = post(&local, &edge, Some("Bearer token-ci"), "c4").await;
    assert_eq!((over.status, over.body["type"].as_str()), (503, Some("https://kubernaut.io/errors/rate-limited")));
    let elsewhere = post(&client_from("127.0.0.2"), &edge, Some("Bearer token-ci"), "c5").await;
    assert_eq!(elsewhere.status, 503, "the same token from another address shares its bucket: {}", elsewhere.body);
    // Another token from the same address has a bucket of its own.
    let other = post(&local, &edge, Some("Bearer token-other"), "o1").await;
    assert_eq!(other.status, 201, "{}", other.body);

    // A rotated token: the new one is taken and the old one refused, without a restart (a
    // refused try costs no signal of the bucket).
    std::fs::write(tokens.join("other"), "token-other-2").unwrap();
    assert_eventually!(
        Duration::from_secs(10),
        async { post(&local, &edge, Some("Bearer token-other-2"), "o2").await.status == 201 },
        "the new token is taken once the file changed"
    );
    assert_eq!(post(&local, &edge, Some("Bearer token-other"), "o3").await.status, 401);
}

/// Kubernetes: TokenReview then SubjectAccessReview, answered by the fake API server, cached,
/// and an API failure answered 503 (Alertmanager retries it), never 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_reviews_admit_the_granted_account_and_an_api_failure_is_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("crs");
    let api = FakeApiServer::start().await;
    api.accept_token("am-token", SA, &["system:serviceaccounts", "system:serviceaccounts:monitoring"]);
    api.accept_token("jane-token", "jane", &["developers"]);
    api.grant(SA, "create", "remediation.kubernaut.io", "remediationrequests");
    let edge = up(
        &sink,
        &[
            ("BREAKWATER_EDGE__AUTH__MODE", "kubernetes".into()),
            ("BREAKWATER_EDGE__AUTH__KUBERNETES__KUBECONFIG", api.write_kubeconfig(dir.path())),
        ],
    )
    .await;
    let client = client_from("127.0.0.1");
    let reviews = |plural: &str| {
        api.request_log().iter().filter(|(verb, path, _)| *verb == Verb::Create && path.ends_with(plural)).count()
    };

    assert_eq!(post(&client, &edge, None, "p0").await.status, 401);
    let bogus = post(&client, &edge, Some("Bearer nobody-issued-this"), "p0").await;
    assert_eq!(bogus.status, 401);
    assert!(bogus.www_authenticate.is_some_and(|w| w.contains("invalid_token")));
    let jane = post(&client, &edge, Some("Bearer jane-token"), "p0").await;
    assert_eq!(jane.status, 403, "{}", jane.body);
    assert_eq!(jane.body["type"], "https://kubernaut.io/errors/forbidden");
    assert_eq!(jane.body["detail"], "jane may not create remediationrequests.remediation.kubernaut.io");
    assert!(jane.www_authenticate.is_none());
    assert_eq!(metric(&edge, "breakwater_signals_received_total", &[]).await, 0.0);
    assert_eq!(cr_files(&sink), 0, "refused webhooks record nothing");

    // Alertmanager's account, three notifications (each alert its own group): reviewed once.
    let alertmanager = Alertmanager::builder(&format!("{}/api/v1/signals/prometheus", edge.url()))
        .bearer_token("am-token")
        .start()
        .await;
    let alerts: Vec<Value> = (1..=3)
        .map(|i| json!({ "labels": { "alertname": "AuthTest", "namespace": "prod", "pod": format!("am-{i}") } }))
        .collect();
    alertmanager.post_alerts(&Value::Array(alerts)).await;
    assert_eventually!(
        Duration::from_secs(15),
        async { cr_files(&sink) == 3 },
        "three CRs; Alertmanager log:\n{}",
        alertmanager.log()
    );
    assert_eq!(reviews("tokenreviews"), 3, "one per distinct token (none for a missing one)");
    assert_eq!(reviews("subjectaccessreviews"), 2, "one per authenticated identity");
    let sent =
        metric(&edge, "breakwater_http_requests_total", &[("route", "/api/v1/signals/prometheus"), ("status", "201")])
            .await;
    assert!(sent >= 3.0, "every notification was answered: {sent}");

    // The API server fails: 503 with Retry-After, and the next try is reviewed again.
    api.accept_token("am-token-2", SA, &["system:serviceaccounts"]);
    api.inject_for(Verb::Create, Fault::Status { code: 503, retry_after_secs: None }, 1);
    let down = post(&client, &edge, Some("Bearer am-token-2"), "p1").await;
    assert_eq!(down.status, 503, "{}", down.body);
    assert_eq!(down.body["detail"], "the bearer token could not be checked, retry later");
    assert_eq!(down.retry_after.as_deref(), Some("5"));
    assert_eq!(post(&client, &edge, Some("Bearer am-token-2"), "p1").await.status, 201);
    assert_eq!(metric(&edge, "breakwater_auth_failures_total", &[("reason", "unavailable")]).await, 1.0);
}
