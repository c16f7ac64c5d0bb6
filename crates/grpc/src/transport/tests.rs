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
    (transport.await.unwrap(), stop)
}

#[tokio::test]
async fn in_process_calls_reach_the_service_health_and_status() {
    let health = ComponentHealth::new("ratelimit");
    health.set("budget", Some("maxmemory too low".into()));
    let (transport, _stop) = in_process(health).await;
    let traced = client(transport, "edge", Duration::from_secs(5));

    let mut ratelimit = RateLimitServiceClient::new(traced.clone());
    let small = pb::CheckRateLimitRequest { sender: "am".into(), signal_count: 3 };
    assert!(ratelimit.check_rate_limit(small).await.unwrap().get_ref().allowed);
    let large = pb::CheckRateLimitRequest { sender: "am".into(), signal_count: 11 };
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
    let request = pb::CheckRateLimitRequest { sender: "am".into(), signal_count: 1 };
    let status = RateLimitServiceClient::new(traced).check_rate_limit(request).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::Cancelled, "Timeout expired"));
}
