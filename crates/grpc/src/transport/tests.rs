use std::sync::Arc;
use std::time::Duration;

use breakwater_proto::v1 as pb;
use breakwater_proto::v1::rate_limit_service_client::RateLimitServiceClient;
use breakwater_proto::v1::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use breakwater_proto::v1::status_service_client::StatusServiceClient;
use tonic::{Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::*;
use crate::{ComponentHealth, Incoming, serve_with_status};

/// Admits a webhook of up to 10 signals.
struct TenAtATime;

#[tonic::async_trait]
impl RateLimitService for TenAtATime {
    async fn check_rate_limit(
        &self,
        request: Request<pb::CheckRateLimitRequest>,
    ) -> Result<Response<pb::CheckRateLimitResponse>, Status> {
        let allowed = request.get_ref().signal_count <= 10;
        Ok(Response::new(pb::CheckRateLimitResponse { allowed, ..Default::default() }))
    }
}

/// A component in process, as `up` starts one: its transport, and the task
/// serving it until `stop` fires.
async fn in_process(health: Arc<ComponentHealth>) -> (Transport, tokio::sync::oneshot::Sender<()>) {
    let (incoming, transport) = Incoming::in_process();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_with_status(RateLimitServiceServer::new(TenAtATime), health, incoming, async {
        let _ = stopped.await;
    }));
    (transport.await.unwrap().transport, stop)
}

#[tokio::test]
async fn in_process_calls_reach_the_service_health_and_status() {
    let health = ComponentHealth::new("ratelimit");
    health.set("budget", Some("maxmemory too low".into()));
    let (transport, _stop) = in_process(health).await;
    let traced = client(transport, "edge", Duration::from_secs(5));

    let mut ratelimit = RateLimitServiceClient::new(traced.clone());
    let small = pb::CheckRateLimitRequest { sender: "am".into(), signal_count: 3, ..Default::default() };
    assert!(ratelimit.check_rate_limit(small).await.unwrap().get_ref().allowed);
    let large = pb::CheckRateLimitRequest { sender: "am".into(), signal_count: 11, ..Default::default() };
    assert!(!ratelimit.check_rate_limit(large).await.unwrap().get_ref().allowed);

    let serving = HealthClient::new(traced.clone()).check(HealthCheckRequest { service: String::new() }).await;
    assert_eq!(serving.unwrap().get_ref().status(), ServingStatus::Serving);
    let status = StatusServiceClient::new(traced).get_status(pb::GetStatusRequest {}).await.unwrap().into_inner();
    assert_eq!((status.component.as_str(), status.problems), ("ratelimit", vec!["maxmemory too low".to_owned()]));
}

#[tokio::test]
async fn a_missed_deadline_is_tonics_timeout() {
    let stuck =
        tower::service_fn(|_: http::Request<Body>| std::future::pending::<Result<http::Response<Body>, BoxError>>());
    let traced = client(Transport(BoxCloneSyncService::new(stuck)), "edge", Duration::from_millis(20));
    let request = pb::CheckRateLimitRequest { sender: "am".into(), signal_count: 1, ..Default::default() };
    let status = RateLimitServiceClient::new(traced).check_rate_limit(request).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::Cancelled, "Timeout expired"));
}

/// Counts the calls it answers.
#[derive(Clone, Default)]
struct Counting(Arc<std::sync::atomic::AtomicUsize>);

#[tonic::async_trait]
impl RateLimitService for Counting {
    async fn check_rate_limit(
        &self,
        _: Request<pb::CheckRateLimitRequest>,
    ) -> Result<Response<pb::CheckRateLimitResponse>, Status> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Response::new(pb::CheckRateLimitResponse { allowed: true, ..Default::default() }))
    }
}

/// A replica serving on a loopback port; its call count.
async fn tcp_replica() -> (String, Counting) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counting = Counting::default();
    let service = RateLimitServiceServer::new(counting.clone());
    tokio::spawn(crate::serve(service, "ratelimit", listener, std::future::pending()));
    (format!("http://{addr}"), counting)
}

#[tokio::test]
async fn calls_go_round_robin_over_replicas_and_around_one_that_refuses() {
    let ((a, at_a), (b, at_b)) = (tcp_replica().await, tcp_replica().await);
    // A port nobody listens on: connections to it are refused.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let urls = format!("{a}, {dead},{b}");
    let transport =
        Transport::replicas("ratelimit", &urls, Duration::from_secs(1), Duration::from_secs(5), None).unwrap();
    let mut client = RateLimitServiceClient::new(client(transport, "edge", Duration::from_secs(2)));
    for _ in 0..30 {
        let request = pb::CheckRateLimitRequest { sender: "am".into(), signal_count: 1, ..Default::default() };
        client.check_rate_limit(request).await.expect("every call answered by a live replica");
    }
    let (at_a, at_b) =
        (at_a.0.load(std::sync::atomic::Ordering::SeqCst), at_b.0.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(at_a + at_b, 30);
    assert!(at_a >= 10 && at_b >= 10, "both live replicas took calls: {at_a} and {at_b}");
}

#[test]
fn https_without_a_ca_and_urls_that_are_not_endpoints_are_refused() {
    let build = |urls| Transport::replicas("dedup", urls, Duration::from_secs(1), Duration::from_secs(5), None);
    assert!(build("https://dedup:9102").is_err());
    assert!(build("dedup:9102").is_err());
    assert!(build(" , ").is_err());
    assert!(build("http://dedup:9102,http://[::1]:9102").is_ok());
}
