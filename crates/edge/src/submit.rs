//! One batch of signals, whichever way it came (an HTTP webhook, a gRPC `SubmitSignals`):
//! admission, the per-alert checks, the pipeline, metrics and the one log line. The routes
//! differ only in how they read a batch and how they answer.

use std::sync::Arc;

use breakwater_signal::is_dns1123_label;

use crate::adapters::{Incoming, InvalidAlert, Signals};
use crate::classify::Classification;
use crate::error::EdgeError;
use crate::pipeline::{AlertOutcome, AlertResult, Batch, PipelineError};
use crate::router::EdgeState;
use breakwater_limiter::Quota;

/// Runs `signals` (one entry per alert, in order) from `sender` through the pipeline and
/// answers one result per alert, in order.
///
/// A permanent problem with one alert is answered in its result, and the rest go on: a
/// 4xx or 5xx for the whole batch would lose them (Alertmanager drops 4xx) or repeat the
/// problem for ever (it retries 5xx).
///
/// # Errors
/// [`EdgeError::Overloaded`] past `edge.max_concurrent_requests`; the pipeline's refusals
/// ([`EdgeError::RateLimited`], [`EdgeError::CannotPersist`]), after which nothing of the
/// batch counts that a retry would count again.
pub(crate) async fn submit(
    state: &EdgeState,
    sender: String,
    source: &'static str,
    signals: Signals,
) -> Result<Submitted, EdgeError> {
    let Signals { shared, incoming } = signals;
    // Taken once the body is read: a slow body holds a connection, never a permit.
    let Ok(_permit) = state.webhooks.clone().try_acquire_owned() else {
        state.shed.hit("edge.max_concurrent_requests webhooks in progress; shedding with 503");
        return Err(EdgeError::Overloaded);
    };
    metrics::counter!("breakwater_signals_received_total", "source" => source).increment(incoming.len() as u64);
    let total = incoming.len();
    let mut rejected: Vec<(usize, AlertResult)> = Vec::new();
    let mut accepted: Vec<(usize, Classification)> = Vec::with_capacity(total);
    let mut accepted_at: Vec<usize> = Vec::with_capacity(total);
    let mut batch = Batch { sender, shared: Arc::new(shared), ..Default::default() };
    for (index, read) in incoming.into_iter().enumerate() {
        let Incoming { signal, delivery } = match read {
            Ok(incoming) => incoming,
            Err(InvalidAlert { alert_name, reason }) => {
                metrics::counter!("breakwater_signals_rejected_total", "source" => source, "reason" => "invalid")
                    .increment(1);
                rejected.push((index, rejected_result(index, String::new(), alert_name, reason)));
                continue;
            }
        };
        let target =
            if signal.namespace.is_empty() { &state.config.fallback_namespace } else { &signal.namespace }.clone();
        if !is_dns1123_label(&target) {
            metrics::counter!("breakwater_signals_rejected_total", "source" => source, "reason" => "invalid_namespace")
                .increment(1);
            let reason = format!(
                "namespace {:?} can never hold a RemediationRequest: a namespace is a DNS-1123 label \
                 (lower-case letters, digits and '-', at most 63 characters)",
                truncated(&target, 80)
            );
            rejected.push((index, rejected_result(index, signal.fingerprint, signal.alert_name, reason)));
            continue;
        }
        if !state.config.namespaces.permits(&target) {
            metrics::counter!("breakwater_signals_rejected_total", "source" => source, "reason" => "denied_namespace")
                .increment(1);
            let reason = format!("namespace {target:?} may not hold RemediationRequests (edge.namespaces)");
            rejected.push((index, rejected_result(index, signal.fingerprint, signal.alert_name, reason)));
            continue;
        }
        batch.targets.push(target);
        batch.signals.push(signal);
        batch.deliveries.push(delivery);
        accepted_at.push(index);
    }
    // The batch's namespaces are looked up together (a cache hit each, mostly), then each
    // alert is classified without I/O.
    let targets: Vec<&str> = batch.targets.iter().map(String::as_str).collect();
    let environments = state.classifier.namespace_environments(&targets).await;
    for ((signal, target), index) in batch.signals.iter_mut().zip(&batch.targets).zip(accepted_at) {
        let classification = state.classifier.classify(signal, &batch.shared.labels, target, &environments);
        signal.environment.clone_from(&classification.environment);
        classification.priority.clone_into(&mut signal.priority);
        classification.remediation_path.clone_into(&mut signal.remediation_path);
        accepted.push((index, classification));
    }
    let count = batch.signals.len() as u64;
    let (results, quota) = if batch.signals.is_empty() {
        (Vec::new(), None)
    } else {
        match state.pipeline.process(batch).await {
            Ok(processed) => (processed.results, processed.quota),
            Err(e) => {
                return Err(pipeline_failure(e, source, count, state.config.rate_limited_status.for_source(source)));
            }
        }
    };
    let mut all: Vec<AlertResult> = Vec::with_capacity(total);
    let mut rejected = rejected.into_iter().peekable();
    for (mut result, (index, classification)) in results.into_iter().zip(accepted) {
        while let Some((_, r)) = rejected.next_if(|(at, _)| *at < index) {
            all.push(r);
        }
        result.index = index;
        result.environment = Some(classification.environment);
        result.priority = Some(classification.priority);
        result.remediation_path = Some(classification.remediation_path);
        all.push(result);
    }
    all.extend(rejected.map(|(_, r)| r));
    for r in &all {
        metrics::counter!("breakwater_signals_total", "source" => source, "outcome" => r.outcome.label()).increment(1);
    }
    log_batch(source, &all);
    Ok(Submitted { results: all, quota })
}

/// A batch's answer: one result per alert, in order, and the sender's quota after it.
pub(crate) struct Submitted {
    pub results: Vec<AlertResult>,
    /// What ratelimit reported (the `RateLimit-*` headers); `None` when it was not asked.
    pub quota: Option<Quota>,
}

/// The answer's summary: the overall status word and a one-line message.
pub(crate) struct Summary {
    /// `created` when at least one CR was created, `rejected` when every alert was
    /// rejected, else `accepted`.
    pub status: &'static str,
    pub message: String,
}

impl Summary {
    pub(crate) fn of(results: &[AlertResult]) -> Self {
        let count = |o: AlertOutcome| results.iter().filter(|r| r.outcome == o).count();
        let message = format!(
            "{} alerts: {} created, {} duplicate, {} storm created, {} storm aggregated, {} resolved, \
             {} duplicate delivery, {} rejected",
            results.len(),
            count(AlertOutcome::Created),
            count(AlertOutcome::Duplicate),
            count(AlertOutcome::StormCreated),
            count(AlertOutcome::StormAggregated),
            count(AlertOutcome::Resolved) + count(AlertOutcome::ResolvedUnknown),
            count(AlertOutcome::DuplicateDelivery),
            count(AlertOutcome::Rejected),
        );
        let status = if results.iter().any(|r| matches!(r.outcome, AlertOutcome::Created | AlertOutcome::StormCreated))
        {
            "created"
        } else if results.iter().all(|r| r.outcome == AlertOutcome::Rejected) {
            "rejected"
        } else {
            "accepted"
        };
        Self { status, message }
    }
}

/// The batch's one log line: INFO when it created a CR or rejected an alert (what an
/// operator acts on), DEBUG when it only counted on open CRs; per-CR detail is DEBUG in
/// crd-writer. Under a storm of repeats the log stays quiet.
fn log_batch(source: &'static str, results: &[AlertResult]) {
    let (mut created, mut rejected) = (0, 0);
    for r in results {
        match r.outcome {
            AlertOutcome::Created | AlertOutcome::StormCreated => created += 1,
            AlertOutcome::Rejected => rejected += 1,
            _ => {}
        }
    }
    let alerts = results.len();
    if created + rejected > 0 {
        tracing::info!(source, alerts, created, rejected, "webhook");
    } else {
        tracing::debug!(source, alerts, created, rejected, "webhook");
    }
}

fn pipeline_failure(e: PipelineError, source: &'static str, count: u64, rate_limited_status: u16) -> EdgeError {
    let reason = match e {
        PipelineError::RateLimited { .. } => "rate_limited",
        PipelineError::CannotPersist { .. } => "cannot_persist",
    };
    metrics::counter!("breakwater_signals_rejected_total", "source" => source, "reason" => reason).increment(count);
    match e {
        PipelineError::RateLimited { retry_after, quota } => {
            EdgeError::RateLimited { retry_after, status: rate_limited_status, quota }
        }
        PipelineError::CannotPersist { retry_after, cause } => EdgeError::CannotPersist { retry_after, cause },
    }
}

fn rejected_result(index: usize, fingerprint: String, alert_name: String, reason: String) -> AlertResult {
    AlertResult {
        index,
        outcome: AlertOutcome::Rejected,
        fingerprint,
        alert_name,
        remediation_request_namespace: None,
        remediation_request_name: None,
        occurrence_count: None,
        storm_alert_count: None,
        reason: Some(reason),
        environment: None,
        priority: None,
        remediation_path: None,
    }
}

/// At most `max` characters of `s`, so an answer never echoes a huge value.
fn truncated(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}
