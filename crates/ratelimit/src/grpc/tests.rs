use async_trait::async_trait;
use breakwater_keyspace::KeyspaceError;
use breakwater_proto::v1::rate_limit_service_server::RateLimitService;
use breakwater_signal::{ManualClock, UnixMillis};

use super::*;
use crate::limiter::TokenBucket;
use crate::store::MemoryRateLimitStore;

/// A store whose Redis is gone.
struct DownStore;

#[async_trait]
impl RateLimitStore for DownStore {
    async fn check(&self, _: &str, _: u32, _: UnixMillis) -> Result<Decision, KeyspaceError> {
        Err(KeyspaceError::Timeout)
    }
}

fn grpc(store: impl RateLimitStore + 'static, enabled: bool) -> (RateLimitGrpc, ManualClock) {
    let clock = ManualClock::new(1_000);
    (RateLimitGrpc::new(Arc::new(store), Arc::new(clock.clone()), enabled), clock)
}

fn request(sender: &str, signal_count: u32) -> Request<pb::CheckRateLimitRequest> {
    Request::new(pb::CheckRateLimitRequest { sender: sender.to_owned(), signal_count })
}

#[tokio::test]
async fn decides_with_the_store_at_the_clock_time() {
    let (grpc, clock) = grpc(MemoryRateLimitStore::new(TokenBucket::new(10.0, 10)), true);
    let ok = grpc.check_rate_limit(request("10.0.0.1", 10)).await.unwrap().into_inner();
    assert_eq!(ok, pb::CheckRateLimitResponse { allowed: true, retry_after_ms: 0, tokens_left: 0.0 });
    let limited = grpc.check_rate_limit(request("10.0.0.1", 2)).await.unwrap().into_inner();
    assert_eq!(limited, pb::CheckRateLimitResponse { allowed: false, retry_after_ms: 200, tokens_left: 0.0 });
    clock.advance_ms(200);
    assert!(grpc.check_rate_limit(request("10.0.0.1", 2)).await.unwrap().into_inner().allowed);
}

#[tokio::test]
async fn empty_sender_is_a_bad_request() {
    let (grpc, _) = grpc(DownStore, true);
    let status = grpc.check_rate_limit(request("", 1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let violations = status.get_details_bad_request().unwrap().field_violations;
    assert_eq!(violations[0].field, "sender");
    let long = "x".repeat(257);
    assert_eq!(grpc.check_rate_limit(request(&long, 1)).await.unwrap_err().code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn store_fault_is_unavailable_without_its_cause() {
    let (grpc, _) = grpc(DownStore, true);
    let status = grpc.check_rate_limit(request("10.0.0.1", 1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "ratelimit store unavailable");
}

#[tokio::test]
async fn disabled_admits_everything_without_the_store() {
    let (grpc, _) = grpc(DownStore, false);
    let reply = grpc.check_rate_limit(request("10.0.0.1", u32::MAX)).await.unwrap().into_inner();
    assert!(reply.allowed);
    assert_eq!(reply.retry_after_ms, 0);
}
