use async_trait::async_trait;
use breakwater_keyspace::KeyspaceError;
use breakwater_proto::v1::rate_limit_service_server::RateLimitService;
use breakwater_signal::{ManualClock, UnixMillis};

use super::*;
use crate::config::Override;
use crate::limiter::Charge;
use crate::store::MemoryRateLimitStore;

/// A store whose Redis is gone.
struct DownStore;

#[async_trait]
impl RateLimitStore for DownStore {
    async fn check(&self, _: &[Charge], _: UnixMillis) -> Result<(Decision, Quota), KeyspaceError> {
        Err(KeyspaceError::Timeout)
    }
}

/// 10 signals per second, 10 at most, and `overrides`.
fn config(enabled: bool, overrides: Vec<Override>) -> RateLimitConfig {
    RateLimitConfig { signals_per_second: 10.0, burst: 10, enabled, overrides, ..RateLimitConfig::default() }
}

fn grpc_with(store: impl RateLimitStore + 'static, config: &RateLimitConfig) -> (RateLimitGrpc, ManualClock) {
    let clock = ManualClock::new(1_000);
    (RateLimitGrpc::new(Arc::new(store), Arc::new(clock.clone()), config), clock)
}

fn grpc(store: impl RateLimitStore + 'static, enabled: bool) -> (RateLimitGrpc, ManualClock) {
    grpc_with(store, &config(enabled, Vec::new()))
}

fn request(sender: &str, signal_count: u32) -> Request<pb::CheckRateLimitRequest> {
    Request::new(pb::CheckRateLimitRequest { sender: sender.to_owned(), signal_count, namespaces: Vec::new() })
}

fn request_in(sender: &str, namespaces: &[(&str, u32)]) -> Request<pb::CheckRateLimitRequest> {
    let namespaces: Vec<pb::NamespaceSignals> = namespaces
        .iter()
        .map(|(ns, n)| pb::NamespaceSignals { namespace: (*ns).to_owned(), signal_count: *n })
        .collect();
    let signal_count = namespaces.iter().map(|n| n.signal_count).sum();
    Request::new(pb::CheckRateLimitRequest { sender: sender.to_owned(), signal_count, namespaces })
}

#[tokio::test]
async fn decides_with_the_store_at_the_clock_time() {
    let (grpc, clock) = grpc(MemoryRateLimitStore::new(), true);
    let ok = grpc.check_rate_limit(request("10.0.0.1", 10)).await.unwrap().into_inner();
    assert_eq!(
        ok,
        pb::CheckRateLimitResponse {
            allowed: true,
            retry_after_ms: 0,
            tokens_left: 0.0,
            limit: 10,
            remaining: 0,
            reset_ms: 1_000
        }
    );
    let limited = grpc.check_rate_limit(request("10.0.0.1", 2)).await.unwrap().into_inner();
    assert_eq!(
        limited,
        pb::CheckRateLimitResponse {
            allowed: false,
            retry_after_ms: 200,
            tokens_left: 0.0,
            limit: 10,
            remaining: 0,
            reset_ms: 1_000
        }
    );
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
    let reply = grpc.check_rate_limit(request("10.0.0.1", 200_000)).await.unwrap().into_inner();
    assert!(reply.allowed);
    assert_eq!(reply.retry_after_ms, 0);
}

// Issue 13: one call with signal_count = 4e9 used to put a sender 46 days in debt.
#[tokio::test]
async fn a_huge_signal_count_is_refused_and_charges_nothing() {
    let store = Arc::new(MemoryRateLimitStore::new());
    let clock = ManualClock::new(1_000);
    let grpc = RateLimitGrpc::new(store.clone(), Arc::new(clock.clone()), &config(true, Vec::new()));
    let status = grpc.check_rate_limit(request("10.0.0.1", 4_000_000_000)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "signal_count");
    assert_eq!(store.bucket("b:10.0.0.1"), None, "the sender's bucket is untouched");
    assert!(grpc.check_rate_limit(request("10.0.0.1", 10)).await.unwrap().into_inner().allowed);
}

#[tokio::test]
async fn bad_namespace_counts_are_refused() {
    let (grpc, _) = grpc(MemoryRateLimitStore::new(), true);
    let mut over = request_in("a", &[("team-a", 3)]).into_inner();
    over.signal_count = 2;
    let status = grpc.check_rate_limit(Request::new(over)).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "namespaces[0].signal_count");
    let status = grpc.check_rate_limit(request_in("a", &[("team-a", 1), ("team-a", 1)])).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "namespaces[1].namespace");
    let status = grpc.check_rate_limit(request_in("a", &[("Team_A", 1)])).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_sender_override_sheds_one_sender_and_spares_another() {
    let slow = Override { sender: Some("10.0.0.7".into()), namespace: None, signals_per_second: 1.0, burst: 2 };
    let fast = Override {
        sender: Some("token:alertmanager".into()),
        namespace: None,
        signals_per_second: 1_000.0,
        burst: 100,
    };
    let (grpc, _) = grpc_with(MemoryRateLimitStore::new(), &config(true, vec![slow, fast]));
    assert!(grpc.check_rate_limit(request("10.0.0.7", 2)).await.unwrap().into_inner().allowed);
    let shed = grpc.check_rate_limit(request("10.0.0.7", 1)).await.unwrap().into_inner();
    assert!(!shed.allowed);
    assert_eq!((shed.limit, shed.remaining, shed.retry_after_ms), (2, 0, 1_000));
    // Another sender on the default (10) is unaffected, and one with a larger override gets more.
    assert!(grpc.check_rate_limit(request("10.0.0.8", 10)).await.unwrap().into_inner().allowed);
    let big = grpc.check_rate_limit(request("token:alertmanager", 50)).await.unwrap().into_inner();
    assert_eq!((big.allowed, big.limit, big.remaining), (true, 100, 50));
}

#[tokio::test]
async fn a_namespace_override_is_a_bucket_every_sender_shares() {
    let team_a = Override { sender: None, namespace: Some("team-a".into()), signals_per_second: 1.0, burst: 3 };
    let (grpc, _) = grpc_with(MemoryRateLimitStore::new(), &config(true, vec![team_a]));
    let first = grpc.check_rate_limit(request_in("s1", &[("team-a", 2), ("team-b", 5)])).await.unwrap().into_inner();
    // Admitted; the namespace bucket (1 left of 3) is the one closest to running out.
    assert_eq!((first.allowed, first.limit, first.remaining), (true, 3, 1));
    // Another sender into team-a finds its bucket short, and nothing of the webhook is charged.
    let shed = grpc.check_rate_limit(request_in("s2", &[("team-a", 2)])).await.unwrap().into_inner();
    assert_eq!((shed.allowed, shed.limit, shed.retry_after_ms), (false, 3, 1_000));
    let s2 = grpc.check_rate_limit(request("s2", 10)).await.unwrap().into_inner();
    assert!(s2.allowed, "the refused webhook cost s2 nothing");
    // team-b has no override: only the senders' buckets count.
    assert!(grpc.check_rate_limit(request_in("s3", &[("team-b", 10)])).await.unwrap().into_inner().allowed);
}
