//! Span export with OTLP/gRPC, one `service.name` per component.
//!
//! A span says which component it belongs to in its `breakwater.component`
//! attribute; [`PerComponentExporter`] sends each span under the OTLP
//! resource of that component, so `breakwater up` (five components, one
//! process) shows in Jaeger as the same five services as split mode. Spans
//! without the attribute go to the process's first component.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Value;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter};

use crate::{TelemetryConfig, TelemetryError};

/// The span attribute naming the component a span belongs to.
pub const COMPONENT_ATTRIBUTE: &str = "breakwater.component";

/// Where and as whom spans are exported, once configuration and `OTEL_*`
/// variables are combined.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportPlan {
    pub endpoint: String,
    /// `telemetry.otlp_ca_file`, for an `https://` endpoint.
    pub ca_file: Option<std::path::PathBuf>,
    /// `(component, service.name)`, the process's default component first.
    pub services: Vec<(&'static str, String)>,
    /// A ratio from the config file; `None` leaves the sampler to `OTEL_TRACES_SAMPLER`
    /// (default: parent-based, always on).
    pub sample_ratio: Option<f64>,
}

/// Decides whether and where to export. `OTEL_*` variables win over the
/// config file; with neither naming an endpoint, or no components (a tool
/// like `breakwater plan`), nothing is exported.
///
/// `OTEL_SERVICE_NAME` names the service of a one-component process; for
/// `up` it replaces the `breakwater` prefix of the five names.
pub fn plan(
    config: &TelemetryConfig,
    components: &[&'static str],
    env: &HashMap<String, String>,
) -> Option<ExportPlan> {
    let var = |key: &str| env.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    if components.is_empty()
        || var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .or(config.otlp_endpoint.as_deref())?
        .to_owned();
    let services = match (components, var("OTEL_SERVICE_NAME")) {
        ([only], Some(name)) => vec![(*only, name.to_owned())],
        (_, prefix) => {
            let prefix = prefix.unwrap_or(&config.service_name_prefix);
            components.iter().map(|c| (*c, format!("{prefix}-{c}"))).collect()
        }
    };
    let sample_ratio = if var("OTEL_TRACES_SAMPLER").is_some() { None } else { config.sample_ratio };
    Some(ExportPlan { endpoint, ca_file: config.otlp_ca_file.clone(), services, sample_ratio })
}

/// Builds the tracer provider for `plan`. Must be called inside a Tokio
/// runtime: the gRPC channels live on it.
pub(crate) fn provider(plan: &ExportPlan) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithTonicConfig as _;
    use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
    let mut exporters = Vec::with_capacity(plan.services.len());
    // https://: the collector's CA, or the system's (rustls, ring).
    let tls = match &plan.ca_file {
        _ if !plan.endpoint.starts_with("https://") => None,
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| TelemetryError::Exporter {
                endpoint: crate::redact::redact_endpoint(&plan.endpoint),
                message: format!("telemetry.otlp_ca_file {}: {e}", ca.display()),
            })?;
            Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
        }
        None => Some(ClientTlsConfig::new().with_native_roots()),
    };
    for (component, service) in &plan.services {
        let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(plan.endpoint.clone());
        if let Some(tls) = &tls {
            builder = builder.with_tls_config(tls.clone());
        }
        let mut exporter = builder.build().map_err(|e| TelemetryError::Exporter {
            endpoint: crate::redact::redact_endpoint(&plan.endpoint),
            message: crate::redact::redact_endpoint(&e.to_string()),
        })?;
        // builder() also reads OTEL_RESOURCE_ATTRIBUTES; the service name is ours.
        exporter.set_resource(&Resource::builder().with_service_name(service.clone()).build());
        exporters.push((*component, exporter));
    }
    // Only for logs: credentials in the URL stay out of them.
    let endpoint = crate::redact::redact_endpoint(&plan.endpoint);
    let router = PerComponentExporter { exporters, endpoint, failing: AtomicBool::new(false) };
    // The batch processor exports from a thread of its own; OTEL_BSP_* tune it.
    let mut builder = SdkTracerProvider::builder().with_span_processor(BatchSpanProcessor::builder(router).build());
    if let Some(ratio) = plan.sample_ratio {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))));
    }
    Ok(builder.build())
}

/// Sends each span with the OTLP resource of its component, and reports an
/// unreachable collector once per outage instead of once per batch.
#[derive(Debug)]
struct PerComponentExporter {
    exporters: Vec<(&'static str, opentelemetry_otlp::SpanExporter)>,
    endpoint: String,
    failing: AtomicBool,
}

impl PerComponentExporter {
    fn index_of(&self, span: &SpanData) -> usize {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == COMPONENT_ATTRIBUTE)
            .and_then(|kv| match &kv.value {
                Value::String(name) => self.exporters.iter().position(|(c, _)| *c == name.as_str()),
                _ => None,
            })
            .unwrap_or(0)
    }

    fn report(&self, result: &OTelSdkResult) {
        match result {
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                endpoint = %self.endpoint,
                cause = %e,
                "cannot export traces to the OTLP endpoint; spans are dropped until it answers, \
                 serving is not affected (logged once per outage)"
            ),
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(endpoint = %self.endpoint, "trace export to the OTLP endpoint works again");
            }
            _ => {}
        }
    }
}

impl SpanExporter for PerComponentExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut groups: Vec<Vec<SpanData>> = vec![Vec::new(); self.exporters.len()];
        for span in batch {
            let index = self.index_of(&span);
            if let Some(group) = groups.get_mut(index) {
                group.push(span);
            }
        }
        let mut result = Ok(());
        for ((_, exporter), spans) in self.exporters.iter().zip(groups) {
            if !spans.is_empty()
                && let Err(e) = exporter.export(spans).await
            {
                result = Err(e);
            }
        }
        self.report(&result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.exporters.iter().map(|(_, e)| e.shutdown_with_timeout(timeout)).fold(Ok(()), Result::and)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporters.iter().map(|(_, e)| e.force_flush()).fold(Ok(()), Result::and)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const UP: &[&str] = &["edge", "ratelimit", "dedup", "storm", "crd-writer"];

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        assert_eq!(plan(&TelemetryConfig::default(), UP, &env(&[])), None);
    }

    #[test]
    fn env_endpoint_wins_over_the_file_and_traces_endpoint_over_the_generic_one() {
        let config = TelemetryConfig { otlp_endpoint: Some("http://file:4317".into()), ..Default::default() };
        let generic = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317")];
        assert_eq!(plan(&config, UP, &env(&[])).unwrap().endpoint, "http://file:4317");
        assert_eq!(plan(&config, UP, &env(&generic)).unwrap().endpoint, "http://generic:4317");
        let both = [generic[0], ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317")];
        assert_eq!(plan(&config, UP, &env(&both)).unwrap().endpoint, "http://traces:4317");
    }

    #[test]
    fn disabled_by_the_standard_switches() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        assert_eq!(plan(&TelemetryConfig::default(), UP, &env(&[on, ("OTEL_SDK_DISABLED", "true")])), None);
        assert_eq!(plan(&TelemetryConfig::default(), UP, &env(&[on, ("OTEL_TRACES_EXPORTER", "none")])), None);
    }

    #[test]
    fn service_names_per_component() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        let names = |components, extra: &[(&str, &str)]| {
            let mut pairs = vec![on];
            pairs.extend_from_slice(extra);
            plan(&TelemetryConfig::default(), components, &env(&pairs)).unwrap().services
        };
        assert_eq!(names(UP, &[])[4], ("crd-writer", "breakwater-crd-writer".to_owned()));
        assert_eq!(names(UP, &[("OTEL_SERVICE_NAME", "gw")])[0], ("edge", "gw-edge".to_owned()));
        assert_eq!(names(&["dedup"], &[]), vec![("dedup", "breakwater-dedup".to_owned())]);
        assert_eq!(names(&["dedup"], &[("OTEL_SERVICE_NAME", "dd")]), vec![("dedup", "dd".to_owned())]);
    }

    #[test]
    fn the_sampler_variable_overrides_the_file_ratio() {
        let config = TelemetryConfig { sample_ratio: Some(0.25), ..Default::default() };
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        assert_eq!(plan(&config, UP, &env(&[on])).unwrap().sample_ratio, Some(0.25));
        let sampler = ("OTEL_TRACES_SAMPLER", "always_off");
        assert_eq!(plan(&config, UP, &env(&[on, sampler])).unwrap().sample_ratio, None);
    }
}
