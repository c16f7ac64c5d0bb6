//! What a component is running short of, for `/readyz`, logs and metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use breakwater_proto::v1 as pb;
use tonic::{Request, Response, Status};

/// The current problems of one component, by concern (`"redis"`,
/// `"budget"`, …). A change is logged once, when it happens, not per request,
/// and `breakwater_degraded{component,concern}` follows it.
#[derive(Debug)]
pub struct ComponentHealth {
    component: &'static str,
    problems: Mutex<BTreeMap<&'static str, String>>,
    /// Whether `problems` is non-empty, so the healthy path (every store call
    /// clears its concern) costs an atomic load, not a lock.
    any: AtomicBool,
}

impl ComponentHealth {
    pub fn new(component: &'static str) -> Arc<Self> {
        Arc::new(Self { component, problems: Mutex::new(BTreeMap::new()), any: AtomicBool::new(false) })
    }

    pub fn component(&self) -> &'static str {
        self.component
    }

    /// Records `problem` (a sentence for the operator) for `concern`, or clears it.
    pub fn set(&self, concern: &'static str, problem: Option<String>) {
        if problem.is_none() && !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut problems = self.problems.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = problems.get(concern) != problem.as_ref();
        if !changed {
            return;
        }
        let component = self.component;
        match &problem {
            Some(p) => {
                tracing::warn!(component, concern, problem = %p, "degraded");
                problems.insert(concern, p.clone());
            }
            None => {
                tracing::info!(component, concern, "recovered");
                problems.remove(concern);
            }
        }
        self.any.store(!problems.is_empty(), Ordering::Release);
        metrics::gauge!("breakwater_degraded", "component" => component, "concern" => concern)
            .set(f64::from(u8::from(problem.is_some())));
    }

    /// Whether `concern` has a problem recorded now.
    pub fn has(&self, concern: &'static str) -> bool {
        self.any.load(Ordering::Acquire)
            && self.problems.lock().unwrap_or_else(PoisonError::into_inner).contains_key(concern)
    }

    /// The current problems, one sentence each.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }
}

/// A component's one observer of its store (Redis, or the embedded store): every store call's
/// outcome goes through it. A failure is reported once under the `redis` concern, saying what
/// happens meanwhile; the first write that succeeds again reports the recovery. Reads do not
/// prove recovery: they still work when Redis is out of memory.
#[derive(Debug)]
pub struct StoreHealth {
    health: Arc<ComponentHealth>,
    /// What the gateway does while the store fails (design brief, degradation table).
    meanwhile: &'static str,
    failing: AtomicBool,
}

impl StoreHealth {
    pub fn new(health: Arc<ComponentHealth>, meanwhile: &'static str) -> Self {
        Self { health, meanwhile, failing: AtomicBool::new(false) }
    }

    /// A call succeeded; `write` says whether it wrote. True when this write ends a failure:
    /// whatever the store held when it failed may be gone.
    pub fn succeeded(&self, write: bool) -> bool {
        if !write {
            return false;
        }
        self.health.set("redis", None);
        self.failing.swap(false, Ordering::Relaxed)
    }

    /// A call failed with an error of `kind` (the error's metric label).
    pub fn failed(&self, kind: &str) {
        self.failing.store(true, Ordering::Relaxed);
        let component = self.health.component();
        self.health.set("redis", Some(format!("{component}'s Redis failed ({kind}): {}", self.meanwhile)));
    }
}

/// Metadata key marking an answer in which the service refused a call because its store
/// failed: the call reached it and changed nothing. A caller can tell that apart from a
/// transport failure, after which the call may or may not have been applied.
const STORE_UNAVAILABLE_KEY: &str = "bw-store-unavailable";

/// `Unavailable`, marked as a refusal by the service itself (see [`is_store_unavailable`]).
pub fn store_unavailable(message: &'static str) -> Status {
    let mut status = Status::unavailable(message);
    status.metadata_mut().insert(STORE_UNAVAILABLE_KEY, tonic::metadata::MetadataValue::from_static("1"));
    status
}

/// Whether the service answered `status` itself because its store failed (nothing applied).
pub fn is_store_unavailable(status: &Status) -> bool {
    status.metadata().get(STORE_UNAVAILABLE_KEY).is_some()
}

/// Whether the call failed without reaching the service: the service answered that its store
/// failed, no connection could be made (refused), or HTTP/2 refused the call unprocessed, so
/// nothing was applied. After any other failure (a reset, a timeout) the call may have been
/// applied.
pub fn nothing_applied(status: &Status) -> bool {
    if is_store_unavailable(status) {
        return true;
    }
    if std::error::Error::source(status).is_some_and(crate::transport::never_sent) {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable)
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Whether the connection failed while the service had the call (it was reset, or the
/// process died): it may have been applied, even though the service looks reachable (another
/// replica answers). Not a missed deadline: a hung service is unreachable, not half-way.
pub fn failed_mid_call(status: &Status) -> bool {
    let Some(source) = std::error::Error::source(status) else { return false };
    if crate::transport::never_sent(source) {
        return false;
    }
    let mut cause = Some(source);
    while let Some(error) = cause {
        if error.is::<h2::Error>() || error.is::<hyper::Error>() || error.is::<std::io::Error>() {
            return true;
        }
        cause = error.source();
    }
    false
}

pub(crate) struct StatusGrpc(pub(crate) Arc<ComponentHealth>);

#[tonic::async_trait]
impl pb::status_service_server::StatusService for StatusGrpc {
    async fn get_status(&self, _: Request<pb::GetStatusRequest>) -> Result<Response<pb::GetStatusResponse>, Status> {
        Ok(Response::new(pb::GetStatusResponse { component: self.0.component.to_owned(), problems: self.0.problems() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_set_and_cleared_per_concern() {
        let h = ComponentHealth::new("dedup");
        h.set("redis", Some("redis down".into()));
        h.set("budget", Some("maxmemory too low".into()));
        h.set("redis", Some("redis down".into()));
        assert_eq!(h.problems(), vec!["maxmemory too low".to_owned(), "redis down".to_owned()]);
        h.set("redis", None);
        assert_eq!(h.problems(), vec!["maxmemory too low".to_owned()]);
    }

    #[test]
    fn a_store_failure_is_reported_until_a_write_succeeds_which_reports_the_recovery_once() {
        let h = ComponentHealth::new("storm");
        let store = StoreHealth::new(h.clone(), "no storm detection");
        assert!(!store.succeeded(true), "nothing to recover from");
        store.failed("oom");
        assert_eq!(h.problems(), vec!["storm's Redis failed (oom): no storm detection".to_owned()]);
        assert!(!store.succeeded(false), "a read works while Redis is out of memory");
        assert!(h.has("redis"));
        assert!(store.succeeded(true));
        assert!(h.problems().is_empty());
        assert!(!store.succeeded(true), "recovered once");
    }
}
