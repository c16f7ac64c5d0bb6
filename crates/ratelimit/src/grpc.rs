//! `breakwater.v1.RateLimitService`: proto in, store call, proto out.

use std::sync::Arc;

use breakwater_proto::v1 as pb;
use breakwater_signal::Clock;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::Error;
use crate::limiter::Decision;
use crate::store::RateLimitStore;

/// Longest sender accepted: a client address fits easily, and the bound keeps
/// every bucket key small.
const MAX_SENDER_LEN: usize = 256;

/// The gRPC face of the rate limiter.
#[derive(Clone)]
pub struct RateLimitGrpc {
    store: Arc<dyn RateLimitStore>,
    clock: Arc<dyn Clock>,
    /// `false` admits every webhook without asking the store.
    enabled: bool,
}

impl RateLimitGrpc {
    pub fn new(store: Arc<dyn RateLimitStore>, clock: Arc<dyn Clock>, enabled: bool) -> Self {
        Self { store, clock, enabled }
    }
}

#[tonic::async_trait]
impl pb::rate_limit_service_server::RateLimitService for RateLimitGrpc {
    #[tracing::instrument(skip_all, fields(breakwater.component = "ratelimit", signals = request.get_ref().signal_count))]
    async fn check_rate_limit(
        &self,
        request: Request<pb::CheckRateLimitRequest>,
    ) -> Result<Response<pb::CheckRateLimitResponse>, Status> {
        let request = request.into_inner();
        if request.sender.is_empty() || request.sender.len() > MAX_SENDER_LEN {
            return Err(invalid("sender", "a client address of 1 to 256 bytes"));
        }
        let decision = if self.enabled {
            self.store.check(&request.sender, request.signal_count, self.clock.now()).await.map_err(Error::from)?
        } else {
            // No bucket to report on: nothing is being counted.
            Decision { allowed: true, retry_after_ms: 0, tokens_left: f64::INFINITY }
        };
        let label = if decision.allowed { "allowed" } else { "limited" };
        metrics::counter!("breakwater_ratelimit_decisions_total", "decision" => label).increment(1);
        Ok(Response::new(pb::CheckRateLimitResponse {
            allowed: decision.allowed,
            retry_after_ms: decision.retry_after_ms,
            tokens_left: decision.tokens_left,
        }))
    }
}

fn invalid(field: &str, expected: &str) -> Status {
    let details = ErrorDetails::with_bad_request_violation(field, format!("must be {expected}"));
    Status::with_error_details(tonic::Code::InvalidArgument, format!("invalid {field}"), details)
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        metrics::counter!("breakwater_ratelimit_store_errors_total", "kind" => e.metric_label()).increment(1);
        tracing::warn!(cause = %e, source = ?std::error::Error::source(&e), "ratelimit store failed");
        // The edge applies the degradation table to Unavailable (its in-process
        // limiter takes over); the cause stays in our logs.
        Status::unavailable("ratelimit store unavailable")
    }
}

#[cfg(test)]
mod tests;
