//! The drift guard: a service's Redis must keep the memory limit and eviction
//! policy its budget needs (seed 001: someone set `maxmemory` to 1 MB).

use std::future::Future;
use std::time::Duration;

use crate::{Keyspace, Result};

/// What a Redis server says about its memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryReport {
    /// `maxmemory` in bytes; 0 means unlimited.
    pub maxmemory: u64,
    pub policy: String,
    pub used_memory: u64,
    pub evicted_keys: u64,
}

impl Keyspace {
    /// Reads `maxmemory`, `maxmemory-policy`, used memory and evictions from `INFO`
    /// (allowed to the service's ACL user; `CONFIG GET` is not, as it returns
    /// `masterauth` and the data directory).
    ///
    /// # Errors
    /// A classified [`crate::KeyspaceError`].
    pub async fn memory_report(&self) -> Result<MemoryReport> {
        let memory: String = self.query(redis::cmd("INFO").arg("memory")).await?;
        let stats: String = self.query(redis::cmd("INFO").arg("stats")).await?;
        Ok(MemoryReport {
            maxmemory: info_field(&memory, "maxmemory").unwrap_or(0),
            policy: info_text(&memory, "maxmemory_policy").unwrap_or_default(),
            used_memory: info_field(&memory, "used_memory").unwrap_or(0),
            evicted_keys: info_field(&stats, "evicted_keys").unwrap_or(0),
        })
    }

    /// Checks the memory settings against `budget` now and every `interval`
    /// until `shutdown`, calling `report` with the problem (a sentence) or
    /// `None`, and keeping the `breakwater_redis_*` gauges current.
    pub async fn watch_budget(
        &self,
        component: &'static str,
        budget: u64,
        interval: Duration,
        mut report: impl FnMut(Option<String>) + Send,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        tokio::pin!(shutdown);
        loop {
            let problem = match self.memory_report().await {
                Ok(r) => {
                    metrics::gauge!("breakwater_redis_used_memory_bytes", "component" => component)
                        .set(r.used_memory as f64);
                    metrics::gauge!("breakwater_redis_maxmemory_bytes", "component" => component)
                        .set(r.maxmemory as f64);
                    metrics::gauge!("breakwater_redis_memory_budget_bytes", "component" => component)
                        .set(budget as f64);
                    metrics::counter!("breakwater_redis_evicted_keys_total", "component" => component)
                        .absolute(r.evicted_keys);
                    let problem = budget_problem(component, &r, budget);
                    metrics::gauge!("breakwater_redis_budget_drift", "component" => component)
                        .set(f64::from(u8::from(problem.is_some())));
                    problem
                }
                Err(e) => Some(format!(
                    "cannot read {component}'s Redis memory settings ({e}): check that it is reachable and that its user may run INFO"
                )),
            };
            report(problem);
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// Whether `policy` only evicts keys with a TTL: every Breakwater key has
/// one, so eviction always has candidates and writes never fail with OOM.
pub fn is_volatile_policy(policy: &str) -> bool {
    policy.starts_with("volatile-")
}

/// Whether `used` is over 90% of a non-zero `maxmemory`.
pub fn nearly_full(used: u64, maxmemory: u64) -> bool {
    maxmemory > 0 && used.saturating_mul(10) > maxmemory.saturating_mul(9)
}

/// The mismatch between a server's memory settings and a keyspace budget, as
/// one sentence naming the value found, the value expected and the fix.
pub fn budget_problem(component: &str, r: &MemoryReport, budget: u64) -> Option<String> {
    let mut problems = Vec::new();
    if !is_volatile_policy(&r.policy) {
        problems.push(format!(
            "{component}'s Redis has maxmemory-policy {}, expected a volatile-* policy such as volatile-lru \
             (every Breakwater key has a TTL, so it always has eviction candidates and writes never fail with OOM): \
             run CONFIG SET maxmemory-policy volatile-lru and set it in redis.conf",
            r.policy
        ));
    }
    if r.maxmemory == 0 {
        problems.push(format!(
            "{component}'s Redis has maxmemory 0 (unlimited), expected at least its budget of {budget} bytes: \
             set maxmemory {budget} in redis.conf so Redis cannot outgrow its host"
        ));
    } else if r.maxmemory < budget {
        problems.push(format!(
            "{component}'s Redis has maxmemory {} bytes, expected at least its budget of {budget} bytes: \
             run CONFIG SET maxmemory {budget} and set it in redis.conf",
            r.maxmemory
        ));
    } else if nearly_full(r.used_memory, r.maxmemory) {
        problems.push(format!(
            "{component}'s Redis uses {} of its {} bytes of maxmemory (over 90%): raise the budget and maxmemory \
             (see `breakwater plan`) or shorten the windows",
            r.used_memory, r.maxmemory
        ));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn info_field(info: &str, field: &str) -> Option<u64> {
    info_text(info, field)?.parse().ok()
}

fn info_text(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|l| Some(l.strip_prefix(field)?.strip_prefix(':')?.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(maxmemory: u64, policy: &str, used: u64) -> MemoryReport {
        MemoryReport { maxmemory, policy: policy.into(), used_memory: used, evicted_keys: 0 }
    }

    #[test]
    fn matching_settings_are_fine() {
        assert_eq!(budget_problem("dedup", &report(64 << 20, "volatile-lru", 1 << 20), 64 << 20), None);
        assert_eq!(budget_problem("dedup", &report(128 << 20, "volatile-ttl", 1 << 20), 64 << 20), None);
    }

    #[test]
    fn lowered_maxmemory_names_found_expected_and_fix() {
        let p = budget_problem("dedup", &report(1_048_576, "volatile-lru", 900_000), 67_108_864).unwrap();
        assert!(p.contains("maxmemory 1048576 bytes"), "{p}");
        assert!(p.contains("budget of 67108864 bytes"), "{p}");
        assert!(p.contains("CONFIG SET maxmemory 67108864"), "{p}");
    }

    #[test]
    fn wrong_policy_unlimited_memory_and_near_full_are_problems() {
        assert!(budget_problem("storm", &report(64 << 20, "noeviction", 0), 1 << 20).unwrap().contains("noeviction"));
        assert!(budget_problem("storm", &report(0, "volatile-lru", 0), 1 << 20).unwrap().contains("maxmemory 0"));
        assert!(budget_problem("storm", &report(100, "volatile-lru", 95), 50).unwrap().contains("over 90%"));
    }

    #[test]
    fn reads_info_fields() {
        let info = "# Memory\r\nused_memory:1234\r\nused_memory_human:1.2K\r\n";
        assert_eq!(info_field(info, "used_memory"), Some(1234));
        assert_eq!(info_field(info, "evicted_keys"), None);
    }
}
