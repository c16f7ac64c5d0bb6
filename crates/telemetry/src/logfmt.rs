//! Log lines carry the trace and span id of the span they happen in, so a
//! line found in the logs leads to its trace in Jaeger and back.

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt;
use tracing::dispatcher::WeakDispatch;
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The subscriber the ids are read through; set once it is installed.
#[derive(Debug, Clone, Default)]
pub(crate) struct DispatchSlot(Arc<OnceLock<WeakDispatch>>);

/// Fills a [`DispatchSlot`] when the subscriber is installed (a formatter
/// cannot look the subscriber up while it is formatting), and keeps each
/// span's `request_id` field as a [`RequestId`] extension for the formatter.
pub(crate) struct LogContext(pub(crate) DispatchSlot);

/// A span's `request_id`, when it is a plain id (letters, digits, `-`, `_`, `.`):
/// it is written into log lines unescaped.
struct RequestId(String);

/// Finds the `request_id` field among a span's values.
struct RequestIdVisitor(Option<String>);

impl tracing::field::Visit for RequestIdVisitor {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "request_id" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "request_id" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl RequestIdVisitor {
    fn keep(self, span: Option<tracing_subscriber::registry::SpanRef<'_, impl for<'a> LookupSpan<'a>>>) {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if let (Some(span), Some(id)) = (span, self.0.filter(|id| !id.is_empty() && id.chars().all(plain))) {
            span.extensions_mut().replace(RequestId(id));
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for LogContext {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _first_wins = self.0.0.set(subscriber.downgrade());
    }

    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        if attrs.metadata().fields().field("request_id").is_some() {
            let mut visitor = RequestIdVisitor(None);
            attrs.record(&mut visitor);
            visitor.keep(ctx.span(id));
        }
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        let mut visitor = RequestIdVisitor(None);
        values.record(&mut visitor);
        visitor.keep(ctx.span(id));
    }
}

/// Wraps a formatter and appends `trace_id` and `span_id`: as JSON keys for
/// [`crate::LogFormat::Json`], as `key=value` for the human format.
pub(crate) struct WithTraceIds<F> {
    pub(crate) inner: F,
    pub(crate) json: bool,
    pub(crate) dispatch: DispatchSlot,
}

/// The request id of the innermost span in scope that has one.
fn request_id<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<String>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    ctx.event_scope()?.find_map(|span| span.extensions().get::<RequestId>().map(|id| id.0.clone()))
}

impl<F> WithTraceIds<F> {
    /// The innermost exported span's ids, for an event inside one.
    fn ids<S, N>(&self, ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        let dispatch = self.dispatch.0.get()?.upgrade()?;
        ctx.event_scope()?.find_map(|span| {
            let context = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let span_context = context.span().span_context().clone();
            span_context.is_valid().then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
        })
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        // Whoever logged it (kube's request spans carry the cluster URL as configured).
        let line = crate::redact::redact_url_credentials(line.trim_end_matches('\n'));
        let line = line.as_ref();
        let mut extra = Vec::new();
        if self.json
            && let Some(id) = request_id(ctx)
        {
            extra.push(("request_id", id));
        }
        if let Some((trace_id, span_id)) = self.ids(ctx) {
            extra.extend([("trace_id", trace_id), ("span_id", span_id)]);
        }
        if extra.is_empty() {
            return writeln!(writer, "{line}");
        }
        if self.json {
            let Some(object) = line.strip_suffix('}') else {
                return writeln!(writer, "{line}");
            };
            // Appended in place, keeping the formatter's key order; an event's
            // own field of the same name wins. Ids need no escaping.
            let fields = event.metadata().fields();
            let mut out = object.to_owned();
            for (key, value) in extra.iter().filter(|(k, _)| fields.field(k).is_none()) {
                out.push_str(&format!(r#","{key}":"{value}""#));
            }
            return writeln!(writer, "{out}}}");
        }
        let pairs: Vec<String> = extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(writer, "{line} {}", pairs.join(" "))
    }
}
