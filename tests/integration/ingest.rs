//! The edge's gRPC ingest API through a tonic client, on both backends: one result per
//! signal, the same CRs as the same alerts over HTTP, retries counted once, invalid signals
//! rejected alone, and a caller over its rate told when to retry.

use std::collections::HashMap;

use breakwater_proto::v1 as pb;
use breakwater_proto::v1::ingest_service_client::IngestServiceClient;
use breakwater_tests::{Alert, Backend, TestGateway, webhook};

fn signal(pairs: &[(&str, &str)]) -> pb::SubmittedSignal {
    let labels: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    pb::SubmittedSignal { labels, ..Default::default() }
}

async fn client(gw: &TestGateway) -> IngestServiceClient<tonic::transport::Channel> {
    IngestServiceClient::connect(gw.ingest_url.clone()).await.expect("connect to the ingest API")
}

async fn submitted_signals_count_on_the_crs_of_the_same_alerts_over_http(backend: Backend) {
    let mut gw = TestGateway::start(backend).await;
    let mut ingest = client(&gw).await;
    let high_memory = [("alertname", "HighMemory"), ("namespace", "prod"), ("pod", "api-1"), ("severity", "critical")];
    let answer = ingest
        .submit_signals(pb::SubmitSignalsRequest {
            signals: vec![
                signal(&high_memory),
                signal(&[("namespace", "prod")]),
                pb::SubmittedSignal {
                    source: "slo-checker".into(),
                    ..signal(&[("alertname", "DiskFull"), ("namespace", "prod"), ("pod", "db-0")])
                },
            ],
        })
        .await
        .expect("SubmitSignals")
        .into_inner();
    assert_eq!(answer.status, "created", "{answer:?}");
    let outcomes: Vec<pb::SignalOutcome> = answer.results.iter().map(pb::SignalResult::outcome).collect();
    assert_eq!(outcomes, [pb::SignalOutcome::Created, pb::SignalOutcome::Rejected, pb::SignalOutcome::Created]);
    assert_eq!(answer.results[1].reason, "signals[1]: labels.alertname is required");
    let cr_of = |r: &pb::SignalResult| r.remediation.clone().expect("a CR");
    let first = cr_of(&answer.results[0]);
    assert_eq!(first.namespace, "prod");
    let cr = gw.remediation(&first.namespace, &first.name).expect("the CR exists");
    assert_eq!(cr["spec"]["signalType"], "grpc-signal");
    let disk = cr_of(&answer.results[2]);
    let cr = gw.remediation(&disk.namespace, &disk.name).expect("the CR exists");
    assert_eq!(cr["spec"]["signalSource"], "slo-checker");
    // The same alert over HTTP is a repeat of the same incident, on the same CR.
    let (status, over_http) =
        gw.post_prometheus(&webhook(&[Alert::firing("HighMemory").in_ns("prod").pod("api-1")])).await;
    assert_eq!(status, 202, "{over_http}");
    assert_eq!(over_http["results"][0]["outcome"], "duplicate");
    assert_eq!(over_http["results"][0]["remediationRequestName"], first.name.as_str());
    assert_eq!(over_http["results"][0]["fingerprint"], answer.results[0].fingerprint.as_str());
    assert_eq!(over_http["results"][0]["occurrenceCount"], 2);
    assert_eq!(gw.remediations().len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn submitted_signals_count_on_the_crs_of_the_same_alerts_over_http_embedded() {
    submitted_signals_count_on_the_crs_of_the_same_alerts_over_http(Backend::Embedded).await;
}

#[tokio::test]
async fn submitted_signals_count_on_the_crs_of_the_same_alerts_over_http_redis_and_kube() {
    submitted_signals_count_on_the_crs_of_the_same_alerts_over_http(Backend::RedisAndKube).await;
}

/// A caller's retry of a call (same `delivery_id`s) counts each signal once.
#[tokio::test]
async fn a_retried_call_counts_each_signal_once() {
    let mut gw = TestGateway::start(Backend::Embedded).await;
    let mut ingest = client(&gw).await;
    let request = pb::SubmitSignalsRequest {
        signals: vec![pb::SubmittedSignal {
            delivery_id: "6f1c2a52-6e1b-4f0a-9d55-0a8f5b1c9e01".into(),
            ..signal(&[("alertname", "HighMemory"), ("namespace", "prod"), ("pod", "api-1")])
        }],
    };
    let first = ingest.submit_signals(request.clone()).await.expect("first").into_inner();
    let again = ingest.submit_signals(request).await.expect("retry").into_inner();
    assert_eq!(first.results[0].outcome(), pb::SignalOutcome::Created);
    assert_eq!(again.results[0].outcome(), pb::SignalOutcome::DuplicateDelivery, "{again:?}");
    assert_eq!(again.results[0].remediation, first.results[0].remediation);
    assert_eq!(again.results[0].occurrence_count, 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_call_that_cannot_be_taken_gets_a_grpc_status_and_records_nothing() {
    let gw = TestGateway::start_with(Backend::Embedded, |c| {
        c.ratelimit.signals_per_second = 0.001;
        c.ratelimit.burst = 2;
    })
    .await;
    let mut ingest = client(&gw).await;
    let empty = ingest.submit_signals(pb::SubmitSignalsRequest { signals: vec![] }).await.expect_err("empty");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument, "{empty:?}");
    let huge = pb::SubmitSignalsRequest {
        signals: vec![pb::SubmittedSignal {
            annotations: HashMap::from([("blob".to_owned(), "x".repeat(600 * 1024))]),
            ..signal(&[("alertname", "A")])
        }],
    };
    let too_large = ingest.submit_signals(huge).await.expect_err("over edge.body_limit_bytes");
    assert_eq!(too_large.code(), tonic::Code::OutOfRange, "{too_large:?}");
    let batch = |names: &[&str]| pb::SubmitSignalsRequest {
        signals: names.iter().map(|pod| signal(&[("alertname", "A"), ("namespace", "prod"), ("pod", pod)])).collect(),
    };
    let within = ingest.submit_signals(batch(&["a", "b"])).await.expect("within the burst").into_inner();
    assert_eq!(within.status, "created");
    let over = ingest.submit_signals(batch(&["c"])).await.expect_err("over the rate");
    assert_eq!(over.code(), tonic::Code::ResourceExhausted, "{over:?}");
    assert!(over.message().contains("over its rate limit"), "{over:?}");
    let retry_after: u64 =
        over.metadata().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).expect("retry-after");
    assert!(retry_after >= 1, "{over:?}");
    assert_eq!(gw.remediations().len(), 2, "the refused call left nothing behind: {:?}", gw.remediations());
}

/// With `edge.auth`, a call carries the same bearer tokens as a webhook, in its
/// `authorization` metadata; without one, or with a wrong one, it is UNAUTHENTICATED and
/// records nothing.
#[tokio::test]
async fn a_call_needs_a_bearer_token_when_auth_is_on() {
    let tokens = tempfile::tempdir().expect("token directory");
    std::fs::write(tokens.path().join("slo-checker"), "s3cret-token-for-tests\n").expect("token file");
    let dir = tokens.path().to_path_buf();
    let gw = TestGateway::start_with(Backend::Embedded, move |c| {
        c.edge.auth.mode = Some(breakwater_edge::config::AuthMode::Static);
        c.edge.auth.token_files = vec![dir];
    })
    .await;
    let mut ingest = client(&gw).await;
    let call = |token: Option<&str>| {
        let mut request = tonic::Request::new(pb::SubmitSignalsRequest {
            signals: vec![signal(&[("alertname", "HighMemory"), ("namespace", "prod"), ("pod", "api-1")])],
        });
        if let Some(token) = token {
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
        }
        request
    };
    let missing = ingest.submit_signals(call(None)).await.expect_err("no token");
    assert_eq!(missing.code(), tonic::Code::Unauthenticated, "{missing:?}");
    let wrong = ingest.submit_signals(call(Some("not-the-token"))).await.expect_err("a wrong token");
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated, "{wrong:?}");
    assert!(gw.remediations().is_empty(), "a refused call records nothing");
    let answer = ingest.submit_signals(call(Some("s3cret-token-for-tests"))).await.expect("the right token");
    assert_eq!(answer.into_inner().results[0].outcome(), pb::SignalOutcome::Created);
    assert_eq!(gw.remediations().len(), 1);
}
