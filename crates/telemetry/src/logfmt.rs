//! Log lines carry the trace and span id of the span they happen in, so a
//! line found in the logs leads to its trace in Jaeger and back.

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt;
use tracing::dispatcher::WeakDispatch;
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The subscriber the ids are read through; set once it is installed.
#[derive(Debug, Clone, Default)]
pub(crate) struct DispatchSlot(Arc<OnceLock<WeakDispatch>>);

/// Fills a [`DispatchSlot`] when the subscriber is installed (a formatter
/// cannot look the subscriber up while it is formatting).
pub(crate) struct CaptureDispatch(pub(crate) DispatchSlot);

impl<S: Subscriber> Layer<S> for CaptureDispatch {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _first_wins = self.0.0.set(subscriber.downgrade());
    }
}

/// Wraps a formatter and appends `trace_id` and `span_id`: as JSON keys for
/// [`crate::LogFormat::Json`], as `key=value` for the human format.
pub(crate) struct WithTraceIds<F> {
    pub(crate) inner: F,
    pub(crate) json: bool,
    pub(crate) dispatch: DispatchSlot,
}

/// The `request_id` field of the innermost span in scope that has one, read
/// from the fields the formatter recorded (JSON or `key=value`).
fn request_id<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<String>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    ctx.event_scope()?.find_map(|span| {
        let extensions = span.extensions();
        let fields = extensions.get::<FormattedFields<N>>()?;
        let (_, rest) = fields.fields.split_once("request_id")?;
        let value = rest.trim_start_matches(['"', ':', '=']);
        let plain = |c: &char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        let id: String = value.chars().take_while(plain).collect();
        (!id.is_empty()).then_some(id)
    })
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
        let line = line.trim_end_matches('\n');
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
            // Appended in place, keeping the formatter's key order; an event's
            // own field of the same name wins.
            let (Some(object), Ok(serde_json::Value::Object(present))) =
                (line.strip_suffix('}'), serde_json::from_str::<serde_json::Value>(line))
            else {
                return writeln!(writer, "{line}");
            };
            let mut out = object.to_owned();
            for (key, value) in extra.iter().filter(|(k, _)| !present.contains_key(*k)) {
                // Ids are hex, UUIDs or alphanumeric: no escaping needed.
                out.push_str(&format!(r#","{key}":"{value}""#));
            }
            return writeln!(writer, "{out}}}");
        }
        let pairs: Vec<String> = extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(writer, "{line} {}", pairs.join(" "))
    }
}
