//! Submits one alert to Breakwater's gRPC ingest API and prints each result.
//!
//! ```sh
//! # breakwater up with the ingest API on: listen.ingest = "127.0.0.1:9100"
//! BREAKWATER_LISTEN__INGEST=127.0.0.1:9100 breakwater up &
//! cargo run -p breakwater-proto --example submit_signals -- http://127.0.0.1:9100
//! ```
//!
//! A signal carries what an Alertmanager alert does. Keep its `delivery_id` across retries
//! of a call (RESOURCE_EXHAUSTED and UNAVAILABLE carry a `retry-after` in seconds): the
//! retry then counts each signal once.

use std::collections::HashMap;
use std::time::Duration;

use breakwater_proto::v1 as pb;
use breakwater_proto::v1::ingest_service_client::IngestServiceClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:9100".to_owned());
    let mut client = IngestServiceClient::connect(url).await?;
    let labels = HashMap::from([
        ("alertname".to_owned(), "HighMemory".to_owned()),
        ("namespace".to_owned(), "prod".to_owned()),
        ("pod".to_owned(), "api-1".to_owned()),
        ("severity".to_owned(), "critical".to_owned()),
    ]);
    let annotations = HashMap::from([("summary".to_owned(), "api-1 uses 95% of its memory limit".to_owned())]);
    let request = pb::SubmitSignalsRequest {
        signals: vec![pb::SubmittedSignal {
            labels,
            annotations,
            source: "example".to_owned(),
            // Made once per signal and kept across retries.
            delivery_id: format!("example-{}", std::process::id()),
            ..Default::default()
        }],
    };
    let answer = loop {
        match client.submit_signals(request.clone()).await {
            Ok(answer) => break answer.into_inner(),
            Err(status) if matches!(status.code(), tonic::Code::ResourceExhausted | tonic::Code::Unavailable) => {
                let secs = status.metadata().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
                tokio::time::sleep(Duration::from_secs(secs.unwrap_or(1))).await;
            }
            Err(status) => return Err(status.into()),
        }
    };
    println!("{}: {}", answer.status, answer.message);
    for result in &answer.results {
        let cr = result.remediation.as_ref().map(|r| format!("{}/{}", r.namespace, r.name)).unwrap_or_default();
        println!("  [{}] {:?} {} {cr} {}", result.index, result.outcome(), result.alert_name, result.reason);
    }
    Ok(())
}
