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

    /// The current problems, one sentence each.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }
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
}
