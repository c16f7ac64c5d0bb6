//! The dedup gRPC server over a real socket: its service, `grpc.health.v1`
//! and server reflection (what `grpcurl` and Kubernetes probes use).

use std::sync::Arc;
use std::time::Duration;

use breakwater_dedup::{DedupGrpc, DedupWindow, MemoryDedupStore};
use breakwater_proto::v1 as pb;
use breakwater_signal::{SystemClock, fingerprint_of};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn serves_dedup_health_and_reflection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = Arc::new(MemoryDedupStore::new(DedupWindow::new(Duration::from_secs(300))));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let health = breakwater_grpc::ComponentHealth::new("dedup");
    let grpc = DedupGrpc::new(store, Arc::new(SystemClock), health.clone(), Duration::from_secs(300), false);
    let server = tokio::spawn(breakwater_dedup::run(grpc, health, listener, async {
        let _ = stopped.await;
    }));
    let channel = breakwater_grpc::connect_lazy(&format!("http://{addr}"), Duration::from_secs(2)).unwrap();

    let mut dedup = pb::dedup_service_client::DedupServiceClient::new(channel.clone());
    let query = pb::DedupQuery {
        fingerprint: fingerprint_of(&["A", "ns", "Pod", "p"]),
        status: pb::SignalStatus::Firing.into(),
        namespace: "ns".into(),
        delivery_key: String::new(),
    };
    let answer =
        dedup.check_signals(pb::CheckSignalsRequest { queries: vec![query.clone(), query.clone()] }).await.unwrap();
    let outcomes: Vec<_> = answer.get_ref().verdicts.iter().map(pb::DedupVerdict::outcome).collect();
    assert_eq!(outcomes, [pb::DedupOutcome::New, pb::DedupOutcome::Duplicate]);

    // A delivery and its copy: counted once; the copy names the incident's CR and count.
    let delivery = pb::DedupQuery { delivery_key: "0123456789abcdef0123456789abcdef".into(), ..query.clone() };
    let answer =
        dedup.check_signals(pb::CheckSignalsRequest { queries: vec![delivery.clone(), delivery] }).await.unwrap();
    let verdicts = &answer.get_ref().verdicts;
    assert_eq!(verdicts[0].outcome(), pb::DedupOutcome::Duplicate);
    assert_eq!(verdicts[1].outcome(), pb::DedupOutcome::Copy);
    assert_eq!(verdicts[1].occurrence_count, 3);
    assert_eq!(verdicts[1].remediation, verdicts[0].remediation);

    let bad_key = pb::DedupQuery { delivery_key: "XYZ".into(), ..query };
    let status = dedup.check_signals(pb::CheckSignalsRequest { queries: vec![bad_key] }).await.unwrap_err();
    assert!(status.message().contains("queries[0].delivery_key"), "{}", status.message());

    let bad = pb::DedupQuery { fingerprint: "not-hex".into(), status: 1, ..Default::default() };
    let status = dedup.check_signals(pb::CheckSignalsRequest { queries: vec![bad] }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("queries[0].fingerprint"), "{}", status.message());

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "breakwater.v1.DedupService"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap();
        assert_eq!(r.get_ref().status(), ServingStatus::Serving, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["breakwater.v1.DedupService", "breakwater.v1.StatusService", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// Reflection lists the API to whoever reaches the port: by default (`auto`) a listener
/// on all addresses, as in a pod, does not serve it; `on` and `off` say otherwise.
#[tokio::test]
async fn reflection_is_served_on_loopback_only_unless_configured() {
    use breakwater_grpc::{Incoming, Reflection};

    for (bind, reflection, served) in [
        ("0.0.0.0:0", Reflection::Auto, false),
        ("127.0.0.1:0", Reflection::Off, false),
        ("0.0.0.0:0", Reflection::On, true),
    ] {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let store = Arc::new(MemoryDedupStore::new(DedupWindow::new(Duration::from_secs(300))));
        let health = breakwater_grpc::ComponentHealth::new("dedup");
        let grpc = DedupGrpc::new(store, Arc::new(SystemClock), health.clone(), Duration::from_secs(300), false);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let incoming = Incoming::Tcp(listener, reflection);
        let server = tokio::spawn(breakwater_dedup::run(grpc, health, incoming, async {
            let _ = stopped.await;
        }));
        let url = format!("http://127.0.0.1:{port}");
        let channel = breakwater_grpc::connect_lazy(&url, Duration::from_secs(2)).unwrap();
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let answer =
            ServerReflectionClient::new(channel.clone()).server_reflection_info(tokio_stream::iter([request])).await;
        match answer {
            Ok(_) => assert!(served, "{bind} {reflection:?} served reflection"),
            Err(status) => {
                assert!(!served, "{bind} {reflection:?}: {status:?}");
                assert_eq!(status.code(), tonic::Code::Unimplemented);
            }
        }
        // The service itself is there either way.
        let mut health = HealthClient::new(channel);
        assert!(health.check(HealthCheckRequest { service: String::new() }).await.is_ok());
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
