//! Every metric Breakwater exports, in one list: its `# HELP` text comes from
//! here, and the alert rules and dashboard in `deploy/observability/` are
//! checked against it, so neither can name a metric that does not exist.

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: MetricKind,
    /// Label names, in the order they are usually read.
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn counter(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind: MetricKind::Counter, labels, help }
}

const fn gauge(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind: MetricKind::Gauge, labels, help }
}

const fn histogram(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind: MetricKind::Histogram, labels, help }
}

/// The catalogue. Grouped by the component that records them; every
/// component's `/metrics` describes all of them.
pub const METRICS: &[Metric] = &[
    // Edge: HTTP and signals.
    counter(
        "breakwater_http_requests_total",
        &["route", "method", "status"],
        "HTTP requests served by the edge, by route, method and status code; an unknown route is \
         `unmatched` and a method other than the standard ones is `other`.",
    ),
    counter(
        "breakwater_edge_limit_hits_total",
        &["limit"],
        "Times the edge hit one of its connection limits, by limit: connections (the oldest idle \
         connection was closed to make room), probe_only (a connection past max_connections), \
         refused (no room even for probes), accept (the process ran out of file descriptors), \
         header_timeout, body_timeout, concurrency (a webhook shed with 503), memory (a webhook \
         shed with 503 because edge.max_in_flight_bytes were in progress).",
    ),
    histogram(
        "breakwater_http_request_duration_seconds",
        &["route"],
        "Time to answer an HTTP request at the edge, by route.",
    ),
    counter("breakwater_signals_received_total", &["source"], "Signals parsed from webhooks, by source."),
    counter(
        "breakwater_signals_total",
        &["source", "outcome"],
        "Signals through the pipeline, by source and outcome \
         (created, duplicate, storm_created, storm_aggregated, resolved, resolved_unknown, \
         rejected, and duplicate_delivery: a copy of a delivery already counted, such as a \
         retry or a second Alertmanager peer's notification).",
    ),
    counter(
        "breakwater_signals_rejected_total",
        &["source", "reason"],
        "Signals refused, by source and reason: rate_limited and cannot_persist count every signal \
         of the refused request; invalid counts a request whose body is not a webhook, and each \
         invalid alert of one that is; invalid_namespace and denied_namespace (edge.namespaces) \
         count alerts whose CR could not go to their namespace.",
    ),
    counter(
        "breakwater_priority_policy_errors_total",
        &[],
        "Alerts whose priority policy evaluation failed (a conflict, an answer other than P0..P3);          each such alert got P2.",
    ),
    counter(
        "breakwater_priority_policy_reloads_total",
        &["outcome"],
        "Times a changed priority policy file was read again, by outcome: ok (now in use), error          (it did not compile; the previous policy stays in use).",
    ),
    counter(
        "breakwater_auth_failures_total",
        &["reason"],
        "Webhooks refused by edge.auth, by reason: missing (no bearer token, 401), invalid (401), \
         forbidden (the identity may not post, 403), unavailable (the token could not be reviewed, 503).",
    ),
    counter(
        "breakwater_auth_kubernetes_reviews_total",
        &["kind", "result"],
        "Review calls the edge made to the Kubernetes API (edge.auth.mode = \"kubernetes\"), by kind \
         (tokenreview, subjectaccessreview) and result (ok, error); cached verdicts make none.",
    ),
    counter(
        "breakwater_environment_lookups_total",
        &["object", "result"],
        "Environment lookups the edge made to the Kubernetes API (edge.classification.namespace_source = \
         \"kubernetes\"), by object (namespace, configmap) and result (ok, not_found, error: an API error or \
         no answer within lookup_timeout_ms); cached answers make none.",
    ),
    counter(
        "breakwater_edge_degraded_calls_total",
        &["component"],
        "Edge calls that found a component unavailable and degraded around it.",
    ),
    gauge("breakwater_edge_component_up", &["component"], "1 when the edge's last health check of a component passed."),
    counter(
        "breakwater_edge_placement_timeouts_total",
        &[],
        "Repeats that waited the full 3 s for a new incident's placement and fell back to its own CR name.",
    ),
    counter(
        "breakwater_edge_placement_retries_total",
        &["result"],
        "New incidents whose placement dedup could not take during the webhook (it failed mid-way), \
         retried in the background: bound, or given_up after 30 s or when too many wait.",
    ),
    gauge(
        "breakwater_edge_component_replicas",
        &["component"],
        "Addresses of a component's replicas the edge calls round-robin (split mode): its URLs, \
         host names looked up every edge.components.resolve_interval_ms.",
    ),
    counter(
        "breakwater_edge_component_retries_total",
        &["component", "reason"],
        "Calls sent on to another replica: not_sent (the replica refused the connection or the stream), \
         or idempotent (it failed after taking a call that is safe to repeat).",
    ),
    counter(
        "breakwater_crd_journal_errors_total",
        &[],
        "Batches of pending count updates crd-writer could not write to its journal (a crash then would lose them).",
    ),
    counter(
        "breakwater_storm_repeats_carried_total",
        &[],
        "Repeats of a storm alert counted on the storm CR while the storm service was unavailable (stormAlertsCarried).",
    ),
    // Every gRPC component, client and server side (one shared tower layer).
    counter(
        "breakwater_grpc_server_requests_total",
        &["component", "rpc", "code"],
        "gRPC calls served, by component, RPC and gRPC status code.",
    ),
    histogram(
        "breakwater_grpc_server_request_duration_seconds",
        &["component", "rpc"],
        "Time to answer a gRPC call, by component and RPC.",
    ),
    counter(
        "breakwater_grpc_client_requests_total",
        &["component", "rpc", "code"],
        "gRPC calls made, by calling component, RPC and gRPC status code (code \"transport\" when no answer came).",
    ),
    histogram(
        "breakwater_grpc_client_request_duration_seconds",
        &["component", "rpc"],
        "Time a gRPC call took as seen by the caller, by calling component and RPC.",
    ),
    // Decisions.
    counter(
        "breakwater_ratelimit_decisions_total",
        &["decision"],
        "Rate-limit checks, by decision (allowed, limited).",
    ),
    counter("breakwater_dedup_decisions_total", &["decision"], "Dedup decisions per signal, by decision."),
    counter(
        "breakwater_storm_decisions_total",
        &["outcome"],
        "Storm decisions per new incident, by outcome (none, opened, joined).",
    ),
    counter("breakwater_storms_opened_total", &["type"], "Storms opened, by type (rate, pattern)."),
    gauge(
        "breakwater_storms_active",
        &[],
        "Storms this storm service opened whose window is still open (ended storms drop out within 5 s).",
    ),
    counter("breakwater_ratelimit_store_errors_total", &["kind"], "Ratelimit store failures, by kind."),
    counter("breakwater_dedup_store_errors_total", &["kind"], "Dedup store failures, by kind."),
    counter("breakwater_storm_store_errors_total", &["kind"], "Storm store failures, by kind."),
    // Redis keyspaces.
    histogram(
        "breakwater_redis_script_duration_seconds",
        &["component", "script"],
        "Time a Redis script call took (pool checkout included), by keyspace and script.",
    ),
    counter(
        "breakwater_redis_errors_total",
        &["component", "kind"],
        "Redis call failures, by keyspace and kind (oom, unavailable, timeout, permission, script).",
    ),
    gauge("breakwater_redis_used_memory_bytes", &["component"], "Redis used_memory of a keyspace's Redis."),
    gauge("breakwater_redis_maxmemory_bytes", &["component"], "Redis maxmemory of a keyspace's Redis."),
    gauge(
        "breakwater_redis_memory_budget_bytes",
        &["component"],
        "The keyspace's configured memory budget (redis.memory_budget_bytes).",
    ),
    counter(
        "breakwater_redis_evicted_keys_total",
        &["component"],
        "Keys Redis evicted (its evicted_keys); must stay 0 under noeviction.",
    ),
    gauge(
        "breakwater_redis_budget_drift",
        &["component"],
        "1 while a keyspace's Redis settings or usage do not match its budget (see /readyz for why).",
    ),
    // crd-writer and Kubernetes.
    counter(
        "breakwater_crd_writes_total",
        &["kind", "outcome"],
        "RemediationRequest writes asked of crd-writer, by kind and outcome.",
    ),
    counter(
        "breakwater_crd_writes_refused_total",
        &["reason"],
        "WriteRemediations calls refused whole before anything was written, by reason: namespace \
         (not permitted by crd_writer.namespaces), foreign (a count or resolution for a CR that \
         crd-writer does not manage, or another incident's).",
    ),
    counter(
        "breakwater_crd_sink_quarantined_total",
        &["reason"],
        "CR files of the directory sink moved aside to <name>.yaml.corrupt-<unix ms> because they \
         could not be read back, by reason (corrupt, not_a_file); the CR is then written again \
         from its pending counts.",
    ),
    counter(
        "breakwater_crd_flush_writes_total",
        &["outcome"],
        "Coalesced count updates written to RemediationRequests, by outcome.",
    ),
    counter(
        "breakwater_crd_dedup_fallback_total",
        &["outcome"],
        "Writes while dedup was unavailable, answered by crd-writer's dedup of last resort, by outcome.",
    ),
    counter(
        "breakwater_kubernetes_requests_total",
        &["verb", "code"],
        "Kubernetes API calls, by verb and HTTP status code (\"error\" when no answer came).",
    ),
    histogram("breakwater_kubernetes_request_duration_seconds", &["verb"], "Time a Kubernetes API call took, by verb."),
    // Degraded modes, every component.
    gauge(
        "breakwater_degraded",
        &["component", "concern"],
        "1 while a component runs degraded for a concern (a store, a peer, a budget).",
    ),
];

/// Registers the `# HELP` text of every metric with the installed recorder.
pub fn describe_all() {
    for metric in METRICS {
        match metric.kind {
            MetricKind::Counter => metrics::describe_counter!(metric.name, metric.help),
            MetricKind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            MetricKind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("breakwater_"), "{}", m.name);
            assert!(m.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{}", m.name);
            match m.kind {
                MetricKind::Counter => assert!(m.name.ends_with("_total"), "counter {} must end in _total", m.name),
                MetricKind::Histogram => assert!(m.name.ends_with("_seconds"), "{} must be in seconds", m.name),
                MetricKind::Gauge => assert!(!m.name.ends_with("_total"), "gauge {} must not end in _total", m.name),
            }
        }
    }
}
