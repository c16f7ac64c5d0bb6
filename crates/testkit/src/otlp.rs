//! An in-process OTLP/gRPC trace receiver: point an exporter at it and assert on the spans.
//!
//! [`OtlpReceiver`] serves `opentelemetry.proto.collector.trace.v1.TraceService/Export` on
//! loopback over plain HTTP/2 (no TLS, no compression) and keeps every span it receives,
//! flattened into a [`ReceivedSpan`] with hex ids and stringified attributes, so tests compare
//! strings instead of walking the OTLP protobuf tree.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::eventually::Deadline;

/// The kind of a [`ReceivedSpan`], as in OTLP's `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `SPAN_KIND_INTERNAL`: an operation inside the application.
    Internal,
    /// `SPAN_KIND_SERVER`: handling of an incoming request.
    Server,
    /// `SPAN_KIND_CLIENT`: an outgoing request.
    Client,
    /// `SPAN_KIND_PRODUCER`: sending a message to a broker.
    Producer,
    /// `SPAN_KIND_CONSUMER`: receiving a message from a broker.
    Consumer,
    /// `SPAN_KIND_UNSPECIFIED`, or a value this version of OTLP does not know.
    Unspecified,
}

impl Kind {
    /// Maps OTLP's `Span.kind` field; unknown values become [`Kind::Unspecified`].
    pub fn from_otlp(kind: i32) -> Self {
        match SpanKind::try_from(kind) {
            Ok(SpanKind::Internal) => Self::Internal,
            Ok(SpanKind::Server) => Self::Server,
            Ok(SpanKind::Client) => Self::Client,
            Ok(SpanKind::Producer) => Self::Producer,
            Ok(SpanKind::Consumer) => Self::Consumer,
            Ok(SpanKind::Unspecified) | Err(_) => Self::Unspecified,
        }
    }
}

/// One span received by an [`OtlpReceiver`], flattened for assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The `service.name` attribute of the span's resource; empty when the resource has none.
    pub service_name: String,
    /// Trace id: 32 lowercase hex digits.
    pub trace_id: String,
    /// Span id: 16 lowercase hex digits.
    pub span_id: String,
    /// Parent span id: 16 lowercase hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// Span kind.
    pub kind: Kind,
    /// Span attributes as strings: string values as they are; ints, bools and doubles through
    /// `to_string`; arrays joined with `,`; key-value lists as `{k=v,...}`; bytes as hex.
    pub attributes: BTreeMap<String, String>,
    /// Names of the span's events, in order.
    pub events: Vec<String>,
    /// Whether the span's status code is `STATUS_CODE_ERROR`.
    pub status_error: bool,
}

impl ReceivedSpan {
    /// The attribute `key`, stringified as described on [`attributes`](Self::attributes).
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// Whether the span has no parent.
    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_empty()
    }

    fn from_otlp(service_name: &str, span: &Span) -> Self {
        Self {
            service_name: service_name.to_owned(),
            trace_id: hex::encode(&span.trace_id),
            span_id: hex::encode(&span.span_id),
            parent_span_id: hex::encode(&span.parent_span_id),
            name: span.name.clone(),
            kind: Kind::from_otlp(span.kind),
            attributes: flatten_attributes(&span.attributes),
            events: span.events.iter().map(|event| event.name.clone()).collect(),
            status_error: span.status.as_ref().is_some_and(|status| status.code == StatusCode::Error as i32),
        }
    }
}

#[derive(Debug, Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    export_requests: usize,
}

/// The `TraceService` implementation: flattens and stores every export.
struct Collector {
    received: Arc<Mutex<Received>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let mut spans = Vec::new();
        for resource_spans in &request.resource_spans {
            let service_name = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| resource.attributes.iter().find(|kv| kv.key == "service.name"))
                .map(|kv| kv.value.as_ref().map(render_value).unwrap_or_default())
                .unwrap_or_default();
            for scope_spans in &resource_spans.scope_spans {
                spans.extend(scope_spans.spans.iter().map(|span| ReceivedSpan::from_otlp(&service_name, span)));
            }
        }
        let mut received = lock(&self.received);
        received.spans.extend(spans);
        received.export_requests += 1;
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// An OTLP/gRPC trace receiver on `127.0.0.1:0`; stops on `Drop`.
///
/// Give [`endpoint`](Self::endpoint) to the exporter (for example as
/// `OTEL_EXPORTER_OTLP_ENDPOINT`). Every `Export` call is accepted with an empty success
/// response. Requests must be uncompressed.
pub struct OtlpReceiver {
    addr: SocketAddr,
    /// Serves TLS: the endpoint is `https://localhost:PORT`.
    tls: bool,
    received: Arc<Mutex<Received>>,
    task: JoinHandle<()>,
}

impl OtlpReceiver {
    /// Starts a receiver with nothing received yet.
    ///
    /// # Panics
    ///
    /// Panics when it cannot bind a loopback port.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts a receiver serving TLS with `leaf` (which must name `localhost`).
    ///
    /// # Panics
    ///
    /// Panics when it cannot bind a loopback port or read the leaf's files.
    pub async fn start_tls(leaf: &crate::tls::Leaf) -> Self {
        let read = |path: &std::path::Path| std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let identity = tonic::transport::Identity::from_pem(read(&leaf.cert_file), read(&leaf.key_file));
        Self::start_with(Some(tonic::transport::ServerTlsConfig::new().identity(identity))).await
    }

    async fn start_with(tls: Option<tonic::transport::ServerTlsConfig>) -> Self {
        let (listener, addr) = crate::port::bind_loopback("OTLP receiver").await;
        let mut server = tonic::transport::Server::builder();
        if let Some(config) = tls.clone() {
            server = server.tls_config(config).unwrap_or_else(|e| panic!("OTLP receiver TLS: {e}"));
        }
        let received = Arc::new(Mutex::new(Received::default()));
        let service = TraceServiceServer::new(Collector { received: Arc::clone(&received) });
        let task = tokio::spawn(async move {
            // A shutdown signal that never fires still puts tonic in graceful mode: when `Drop`
            // aborts this task, tonic's dropped shutdown watch tells every open connection
            // (each runs in its own spawned task) to close, instead of living on.
            let served = server
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), std::future::pending::<()>())
                .await;
            if let Err(err) = served {
                tracing::error!(cause = %err, "OTLP receiver stopped");
            }
        });
        Self { addr, tls: tls.is_some(), received, task }
    }

    /// `http://127.0.0.1:PORT` (`https://localhost:PORT` with TLS), the OTLP/gRPC endpoint to
    /// export to.
    pub fn endpoint(&self) -> String {
        if self.tls { format!("https://localhost:{}", self.addr.port()) } else { format!("http://{}", self.addr) }
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.received).spans.clone()
    }

    /// How many `Export` calls the receiver has answered.
    pub fn export_requests(&self) -> usize {
        lock(&self.received).export_requests
    }

    /// Polls until `pred` holds for the spans received so far and returns them.
    ///
    /// # Panics
    ///
    /// Panics after `timeout`, listing every span received (service, name and ids).
    pub async fn wait_for_spans(&self, timeout: Duration, pred: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
        let deadline = Deadline::after(timeout);
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            if deadline.expired() {
                panic!(
                    "OTLP receiver: span condition not met within {timeout:?}; {} export request(s), {} span(s):\n{}",
                    self.export_requests(),
                    spans.len(),
                    dump(&spans)
                );
            }
            deadline.tick().await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One line per span: service, name, kind, trace/span/parent ids and an error marker, for
/// assertion messages.
pub fn dump(spans: &[ReceivedSpan]) -> String {
    let mut out = String::new();
    for span in spans {
        let parent = if span.is_root() { "-" } else { span.parent_span_id.as_str() };
        let error = if span.status_error { " ERROR" } else { "" };
        let _ = writeln!(
            out,
            "  [{}] {} ({:?}) trace={} span={} parent={parent}{error}",
            span.service_name, span.name, span.kind, span.trace_id, span.span_id
        );
    }
    if out.is_empty() {
        out.push_str("  (no spans)\n");
    }
    out
}

/// The spans of trace `trace_id` as an indented tree (children under their parent, two
/// spaces per level, in arrival order), for assertion messages:
///
/// ```text
/// POST /api/v2/alerts [breakwater-edge] Server span=1111111111111111
///   dedup.check [breakwater-edge] Client span=2222222222222222 ERROR
/// ```
///
/// A span whose parent was not received is shown as a root with `(parent P missing)`.
pub fn tree(spans: &[ReceivedSpan], trace_id: &str) -> String {
    let trace: Vec<&ReceivedSpan> = spans.iter().filter(|span| span.trace_id == trace_id).collect();
    if trace.is_empty() {
        return format!("(no spans of trace {trace_id})\n");
    }
    let ids: HashSet<&str> = trace.iter().map(|span| span.span_id.as_str()).collect();
    let mut out = String::new();
    let mut printed = HashSet::new();
    for (index, root) in trace.iter().enumerate() {
        if root.is_root() || !ids.contains(root.parent_span_id.as_str()) {
            write_subtree(&mut out, &trace, index, 0, &mut printed);
        }
    }
    // Spans left over are in a parent cycle (or share a span id with another span).
    for index in 0..trace.len() {
        if !printed.contains(&index) {
            write_subtree(&mut out, &trace, index, 0, &mut printed);
        }
    }
    out
}

fn write_subtree(out: &mut String, trace: &[&ReceivedSpan], index: usize, depth: usize, printed: &mut HashSet<usize>) {
    if !printed.insert(index) {
        return;
    }
    let span = trace[index];
    let indent = "  ".repeat(depth);
    let error = if span.status_error { " ERROR" } else { "" };
    let missing = if depth == 0 && !span.is_root() && !trace.iter().any(|other| other.span_id == span.parent_span_id) {
        format!(" (parent {} missing)", span.parent_span_id)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "{indent}{} [{}] {:?} span={}{error}{missing}",
        span.name, span.service_name, span.kind, span.span_id
    );
    for (child, candidate) in trace.iter().enumerate() {
        if candidate.parent_span_id == span.span_id && child != index {
            write_subtree(out, trace, child, depth + 1, printed);
        }
    }
}

fn flatten_attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(render_value).unwrap_or_default())).collect()
}

fn render_value(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        Some(Value::ArrayValue(array)) => array.values.iter().map(render_value).collect::<Vec<_>>().join(","),
        Some(Value::KvlistValue(list)) => {
            let pairs: Vec<String> = list
                .values
                .iter()
                .map(|kv| format!("{}={}", kv.key, kv.value.as_ref().map(render_value).unwrap_or_default()))
                .collect();
            format!("{{{}}}", pairs.join(","))
        }
        Some(Value::BytesValue(bytes)) => hex::encode(bytes),
        // Only meaningful for profiles, which reference a string table this receiver never sees.
        Some(Value::StringValueStrindex(index)) => format!("<strindex {index}>"),
        None => String::new(),
    }
}

fn lock(received: &Mutex<Received>) -> MutexGuard<'_, Received> {
    received.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
