//! `breakwater.v1.RateLimitService`: proto in, store call, proto out.

use std::sync::Arc;

use breakwater_proto::v1 as pb;
use breakwater_signal::Clock;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::Error;
use crate::config::RateLimitConfig;
use crate::limiter::{Decision, Limits, Quota};
use crate::store::RateLimitStore;

/// Longest sender accepted: a client address or an identity such as
/// `token:alertmanager` fits easily, and the bound keeps every bucket key small.
pub(crate) const MAX_SENDER_LEN: usize = 256;

/// The gRPC face of the rate limiter.
#[derive(Clone)]
pub struct RateLimitGrpc {
    store: Arc<dyn RateLimitStore>,
    clock: Arc<dyn Clock>,
    limits: Arc<Limits>,
    /// `ratelimit.max_signals_per_check`.
    max_signals: u32,
    /// `false` admits every webhook without asking the store.
    enabled: bool,
}

impl RateLimitGrpc {
    /// Decides on `store` with the limits, the bound and the switch of `config`.
    pub fn new(store: Arc<dyn RateLimitStore>, clock: Arc<dyn Clock>, config: &RateLimitConfig) -> Self {
        Self {
            store,
            clock,
            limits: Arc::new(config.limits()),
            max_signals: config.max_signals_per_check,
            enabled: config.enabled,
        }
    }

    /// The request's namespaces as charges take them, checked: each a namespace
    /// name, at most once, and counts adding up to at most `signal_count`.
    fn namespaces(&self, request: &pb::CheckRateLimitRequest) -> Result<Vec<(String, u32)>, Status> {
        let mut seen = std::collections::HashSet::new();
        let mut total: u64 = 0;
        let mut out = Vec::with_capacity(request.namespaces.len());
        for (i, ns) in request.namespaces.iter().enumerate() {
            if !breakwater_signal::is_dns1123_label(&ns.namespace) || !seen.insert(ns.namespace.as_str()) {
                return Err(invalid(&format!("namespaces[{i}].namespace"), "a namespace name, listed once"));
            }
            total += u64::from(ns.signal_count);
            if total > u64::from(request.signal_count) {
                return Err(invalid(
                    &format!("namespaces[{i}].signal_count"),
                    "counts adding up to at most signal_count",
                ));
            }
            out.push((ns.namespace.clone(), ns.signal_count));
        }
        Ok(out)
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
            return Err(invalid("sender", "a sender identity of 1 to 256 bytes"));
        }
        // Checked before anything is charged: one call must not put a sender in
        // a debt no webhook could have caused.
        if request.signal_count > self.max_signals {
            let expected = format!("at most {} (ratelimit.max_signals_per_check)", self.max_signals);
            return Err(invalid("signal_count", &expected));
        }
        let namespaces = self.namespaces(&request)?;
        let (decision, quota) = if self.enabled {
            let charges = self.limits.charges(&request.sender, request.signal_count, &namespaces);
            self.store.check(&charges, self.clock.now()).await.map_err(Error::from)?
        } else {
            // No bucket to report on: nothing is being counted.
            (Decision { allowed: true, retry_after_ms: 0, tokens_left: f64::INFINITY }, Quota::default())
        };
        let label = if decision.allowed { "allowed" } else { "limited" };
        metrics::counter!("breakwater_ratelimit_decisions_total", "decision" => label).increment(1);
        Ok(Response::new(pb::CheckRateLimitResponse {
            allowed: decision.allowed,
            retry_after_ms: decision.retry_after_ms,
            tokens_left: decision.tokens_left,
            limit: quota.limit,
            remaining: quota.remaining,
            reset_ms: quota.reset_ms,
        }))
    }
}

/// `INVALID_ARGUMENT` naming `field`; nothing was charged.
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
