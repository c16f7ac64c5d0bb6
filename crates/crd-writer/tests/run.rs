//! `run` on a real socket: the gRPC face, the flusher, and the flush at shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use breakwater_crd_writer::crd::CrRef;
use breakwater_crd_writer::{CrdWriter, CrdWriterConfig, DirSink, MemorySink, RemediationSink};
use breakwater_proto::v1 as pb;
use breakwater_proto::v1::crd_writer_service_client::CrdWriterServiceClient;
use breakwater_signal::ManualClock;
use tokio::net::TcpListener;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const T0: i64 = 1_700_000_000_000;

fn write(kind: pb::WriteKind, count: u64) -> pb::RemediationWrite {
    pb::RemediationWrite {
        kind: kind.into(),
        signal: Some(pb::Signal {
            fingerprint: "e".repeat(64),
            alert_name: "TargetDown".to_owned(),
            severity: pb::Severity::Critical.into(),
            namespace: "monitoring".to_owned(),
            resource: Some(pb::Resource {
                kind: "Service".to_owned(),
                name: "node-exporter".to_owned(),
                namespace: "monitoring".to_owned(),
            }),
            labels: HashMap::from([("environment".to_owned(), "production".to_owned())]),
            received_time_unix_ms: T0,
            source_type: "prometheus-alert".to_owned(),
            source: "prometheus".to_owned(),
            ..pb::Signal::default()
        }),
        remediation: Some(pb::RemediationRef { namespace: "monitoring".to_owned(), name: "rr-eeee-1".to_owned() }),
        first_seen_unix_ms: T0,
        last_seen_unix_ms: T0 + count as i64,
        occurrence_count: count,
        ..pb::RemediationWrite::default()
    }
}

async fn start(
    sink: Arc<dyn RemediationSink>,
    config: CrdWriterConfig,
) -> Result<
    (
        CrdWriterServiceClient<tonic::transport::Channel>,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<breakwater_crd_writer::Result<()>>,
    ),
    Box<dyn std::error::Error>,
> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let writer = CrdWriter::new(config, sink).with_clock(Arc::new(ManualClock::new(T0)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(breakwater_crd_writer::run(writer, listener, async {
        let _ = stopped.await;
    }));
    let channel = breakwater_grpc::connect_lazy(&url, Duration::from_secs(5))?;
    Ok((CrdWriterServiceClient::new(channel), stop, server))
}

#[tokio::test]
async fn counts_queued_before_shutdown_reach_the_cr() -> TestResult {
    let sink = Arc::new(MemorySink::new());
    // The periodic flush never comes within the test: only the final one can write the counts.
    let config = CrdWriterConfig { flush_interval_ms: 60_000, ..CrdWriterConfig::default() };
    let (mut client, stop, server) = start(sink.clone(), config).await?;

    let created = client
        .write_remediations(pb::WriteRemediationsRequest {
            writes: vec![write(pb::WriteKind::Create, 1)],
            shared: None,
        })
        .await?
        .into_inner();
    assert_eq!(created.results.len(), 1);
    assert_eq!(created.results[0].outcome(), pb::WriteOutcome::Created);

    let writes: Vec<_> = (2..=500).map(|n| write(pb::WriteKind::Occurrence, n)).collect();
    let queued = client.write_remediations(pb::WriteRemediationsRequest { writes, shared: None }).await?.into_inner();
    assert_eq!(queued.results.len(), 499);
    assert!(queued.results.iter().all(|r| r.outcome() == pb::WriteOutcome::Queued));
    let empty = client.write_remediations(pb::WriteRemediationsRequest { writes: Vec::new(), shared: None }).await?;
    assert!(empty.into_inner().results.is_empty());

    let _ = stop.send(());
    server.await??;
    let at = CrRef { namespace: "monitoring".to_owned(), name: "rr-eeee-1".to_owned() };
    let rr = sink.get(&at).await?.ok_or("CR missing")?;
    assert_eq!(rr.spec.deduplication.occurrence_count, 500);
    assert_eq!(sink.calls().writes, 1, "499 occurrences, one write");
    Ok(())
}

#[tokio::test]
async fn the_flusher_writes_while_serving() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sink = Arc::new(DirSink::new(dir.path()));
    let config = CrdWriterConfig { flush_interval_ms: 20, ..CrdWriterConfig::default() };
    let (mut client, stop, server) = start(sink.clone(), config).await?;
    let writes = vec![write(pb::WriteKind::Occurrence, 7)];
    let answer = client.write_remediations(pb::WriteRemediationsRequest { writes, shared: None }).await?.into_inner();
    assert_eq!(answer.results[0].outcome(), pb::WriteOutcome::Queued);

    let at = CrRef { namespace: "monitoring".to_owned(), name: "rr-eeee-1".to_owned() };
    let count = breakwater_testkit::eventually(Duration::from_secs(5), || async {
        sink.get(&at).await.ok().flatten().map(|rr| rr.spec.deduplication.occurrence_count)
    })
    .await;
    assert_eq!(count, 7, "an occurrence of a CR that did not exist created it, with its count");
    let _ = stop.send(());
    server.await??;
    Ok(())
}

#[tokio::test]
async fn an_invalid_config_is_refused_before_serving() -> TestResult {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let config = CrdWriterConfig { flush_interval_ms: 0, ..CrdWriterConfig::default() };
    let writer = CrdWriter::new(config, Arc::new(MemorySink::new()));
    let err = breakwater_crd_writer::run(writer, listener, std::future::pending()).await.err().ok_or("ran")?;
    assert_eq!(
        err.to_string(),
        "invalid configuration: crd_writer.flush_interval_ms = 0 is not allowed: use 1..=60000"
    );
    Ok(())
}
