//! The degradation table's ratelimit row: when Redis fails, an in-process
//! limiter takes over, and Redis takes back over as soon as it answers again.

use std::sync::Arc;

use async_trait::async_trait;
use breakwater_grpc::{ComponentHealth, StoreHealth};
use breakwater_keyspace::KeyspaceError;
use breakwater_signal::UnixMillis;

use super::{MemoryRateLimitStore, RateLimitStore};
use crate::limiter::{Charge, Decision, Quota};

/// `primary` (Redis) while it answers, `fallback` (in-process) while it does not.
pub struct FallbackRateLimitStore {
    primary: Arc<dyn RateLimitStore>,
    fallback: MemoryRateLimitStore,
    store_health: StoreHealth,
}

impl FallbackRateLimitStore {
    pub fn new(primary: Arc<dyn RateLimitStore>, fallback: MemoryRateLimitStore, health: Arc<ComponentHealth>) -> Self {
        Self { primary, fallback, store_health: StoreHealth::new(health, MEANWHILE) }
    }
}

/// What happens while Redis fails (design brief, degradation table).
const MEANWHILE: &str = "the in-process limiter is in use until it answers again";

#[async_trait]
impl RateLimitStore for FallbackRateLimitStore {
    async fn check(&self, charges: &[Charge], now: UnixMillis) -> Result<(Decision, Quota), KeyspaceError> {
        match self.primary.check(charges, now).await {
            Ok(decision) => {
                self.store_health.succeeded(true);
                Ok(decision)
            }
            Err(e) => {
                metrics::counter!("breakwater_ratelimit_store_errors_total", "kind" => e.metric_label()).increment(1);
                self.store_health.failed(e.metric_label());
                self.fallback.check(charges, now).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::TokenBucket;

    struct Down;

    #[async_trait]
    impl RateLimitStore for Down {
        async fn check(&self, _: &[Charge], _: UnixMillis) -> Result<(Decision, Quota), KeyspaceError> {
            Err(KeyspaceError::Timeout)
        }
    }

    fn charge(signals: u32) -> Vec<Charge> {
        vec![Charge { key: "b:a".to_owned(), bucket: TokenBucket::new(1.0, 2), signals }]
    }

    #[tokio::test]
    async fn limits_in_process_while_redis_is_down_and_says_so() {
        let health = ComponentHealth::new("ratelimit");
        let store = FallbackRateLimitStore::new(Arc::new(Down), MemoryRateLimitStore::new(), health.clone());
        assert!(store.check(&charge(2), 0).await.unwrap().0.allowed);
        assert!(!store.check(&charge(1), 0).await.unwrap().0.allowed, "the fallback still limits");
        assert_eq!(health.problems().len(), 1);
        assert!(health.problems()[0].contains("in-process limiter"));
    }

    #[tokio::test]
    async fn recovery_clears_the_problem() {
        let health = ComponentHealth::new("ratelimit");
        health.set("redis", Some("down".into()));
        let primary = Arc::new(MemoryRateLimitStore::new());
        let store = FallbackRateLimitStore::new(primary, MemoryRateLimitStore::new(), health.clone());
        assert!(store.check(&charge(1), 0).await.unwrap().0.allowed);
        assert!(health.problems().is_empty());
    }
}
