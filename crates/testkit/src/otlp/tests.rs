use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

use super::{Kind, OtlpReceiver, ReceivedSpan, dump, tree};

const TRACE_ID: [u8; 16] = [0xab, 0xcd, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0xef];
const PARENT_ID: [u8; 8] = [0x11; 8];
const CHILD_ID: [u8; 8] = [0x0a, 0, 0, 0, 0, 0, 0, 0x2b];

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), ..KeyValue::default() }
}

fn text(value: &str) -> Value {
    Value::StringValue(value.to_owned())
}

fn request() -> ExportTraceServiceRequest {
    let parent = Span {
        trace_id: TRACE_ID.to_vec(),
        span_id: PARENT_ID.to_vec(),
        name: "POST /api/v2/alerts".to_owned(),
        kind: SpanKind::Server as i32,
        attributes: vec![
            kv("http.request.method", text("POST")),
            kv("http.response.status_code", Value::IntValue(200)),
            kv("retry", Value::BoolValue(false)),
            kv("ratio", Value::DoubleValue(0.25)),
            kv(
                "tags",
                Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue { value: Some(text("a")) }, AnyValue { value: Some(Value::IntValue(2)) }],
                }),
            ),
        ],
        ..Span::default()
    };
    let child = Span {
        trace_id: TRACE_ID.to_vec(),
        span_id: CHILD_ID.to_vec(),
        parent_span_id: PARENT_ID.to_vec(),
        name: "dedup.check".to_owned(),
        kind: SpanKind::Client as i32,
        events: vec![Event { name: "retrying".to_owned(), ..Event::default() }],
        status: Some(Status { message: "unavailable".to_owned(), code: StatusCode::Error as i32 }),
        ..Span::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", text("breakwater-edge")), kv("host.name", text("test"))],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope { name: "breakwater".to_owned(), ..InstrumentationScope::default() }),
                spans: vec![parent, child],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

async fn export(receiver: &OtlpReceiver, request: ExportTraceServiceRequest) {
    let mut client = TraceServiceClient::connect(receiver.endpoint()).await.expect("connect to the OTLP receiver");
    let response = client.export(request).await.expect("export is accepted").into_inner();
    assert_eq!(response.partial_success, None);
}

#[tokio::test]
async fn flattens_exported_spans() {
    let receiver = OtlpReceiver::start().await;
    assert!(receiver.endpoint().starts_with("http://127.0.0.1:"), "{}", receiver.endpoint());
    assert_eq!(receiver.export_requests(), 0);
    assert!(receiver.spans().is_empty());

    export(&receiver, request()).await;

    let spans = receiver.wait_for_spans(Duration::from_secs(5), |spans| spans.len() == 2).await;
    assert_eq!(receiver.export_requests(), 1);
    let [parent, child] = spans.as_slice() else { unreachable!("two spans") };

    assert_eq!(parent.service_name, "breakwater-edge");
    assert_eq!(parent.trace_id, "abcd000102030405060708090a0b0cef");
    assert_eq!(parent.span_id, "1111111111111111");
    assert_eq!(parent.parent_span_id, "");
    assert!(parent.is_root());
    assert_eq!(parent.name, "POST /api/v2/alerts");
    assert_eq!(parent.kind, Kind::Server);
    assert_eq!(parent.attr("http.request.method"), Some("POST"));
    assert_eq!(parent.attr("http.response.status_code"), Some("200"));
    assert_eq!(parent.attr("retry"), Some("false"));
    assert_eq!(parent.attr("ratio"), Some("0.25"));
    assert_eq!(parent.attr("tags"), Some("a,2"));
    assert_eq!(parent.attr("host.name"), None, "resource attributes are not span attributes");
    assert!(parent.events.is_empty());
    assert!(!parent.status_error);

    assert_eq!(child.service_name, "breakwater-edge");
    assert_eq!(child.trace_id, parent.trace_id);
    assert_eq!(child.span_id, "0a0000000000002b");
    assert_eq!(child.parent_span_id, parent.span_id);
    assert!(!child.is_root());
    assert_eq!(child.kind, Kind::Client);
    assert!(child.attributes.is_empty());
    assert_eq!(child.events, ["retrying"]);
    assert!(child.status_error);

    assert_eq!(
        tree(&spans, &parent.trace_id),
        "POST /api/v2/alerts [breakwater-edge] Server span=1111111111111111\n  \
         dedup.check [breakwater-edge] Client span=0a0000000000002b ERROR\n"
    );
}

#[tokio::test]
async fn counts_every_export_request() {
    let receiver = OtlpReceiver::start().await;
    export(&receiver, request()).await;
    export(&receiver, ExportTraceServiceRequest::default()).await;
    assert_eq!(receiver.export_requests(), 2);
    assert_eq!(receiver.spans().len(), 2);
}

#[tokio::test]
#[should_panic(expected = "span=0a0000000000002b parent=1111111111111111")]
async fn wait_for_spans_panics_with_a_dump() {
    let receiver = OtlpReceiver::start().await;
    export(&receiver, request()).await;
    receiver.wait_for_spans(Duration::from_millis(100), |spans| spans.iter().any(|s| s.name == "missing")).await;
}

fn span(name: &str, trace: &str, id: &str, parent: &str) -> ReceivedSpan {
    ReceivedSpan {
        service_name: "svc".to_owned(),
        trace_id: trace.to_owned(),
        span_id: id.to_owned(),
        parent_span_id: parent.to_owned(),
        name: name.to_owned(),
        kind: Kind::Internal,
        attributes: Default::default(),
        events: Vec::new(),
        status_error: false,
    }
}

#[test]
fn tree_nests_children_and_flags_orphans() {
    let spans = [
        span("grandchild", "t1", "c", "b"),
        span("root", "t1", "a", ""),
        span("other trace", "t2", "x", ""),
        span("child", "t1", "b", "a"),
        span("orphan", "t1", "d", "zz"),
        span("second child", "t1", "e", "a"),
    ];
    assert_eq!(
        tree(&spans, "t1"),
        "root [svc] Internal span=a\n  child [svc] Internal span=b\n    grandchild [svc] Internal span=c\n  \
         second child [svc] Internal span=e\norphan [svc] Internal span=d (parent zz missing)\n"
    );
    assert_eq!(tree(&spans, "t3"), "(no spans of trace t3)\n");
    // A parent cycle still prints every span once.
    let cycle = [span("p", "t", "1", "2"), span("q", "t", "2", "1")];
    assert_eq!(tree(&cycle, "t").lines().count(), 2);
}

#[test]
fn dump_lists_ids() {
    assert_eq!(dump(&[]), "  (no spans)\n");
    assert_eq!(dump(&[span("root", "t1", "a", "")]), "  [svc] root (Internal) trace=t1 span=a parent=-\n");
}

#[test]
fn unknown_kinds_are_unspecified() {
    assert_eq!(Kind::from_otlp(5), Kind::Consumer);
    assert_eq!(Kind::from_otlp(4), Kind::Producer);
    assert_eq!(Kind::from_otlp(1), Kind::Internal);
    assert_eq!(Kind::from_otlp(0), Kind::Unspecified);
    assert_eq!(Kind::from_otlp(42), Kind::Unspecified);
}

/// The exporter production uses (OTLP/gRPC over tonic, batch processor) reaches the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_from_the_opentelemetry_sdk_exporter() {
    use opentelemetry::KeyValue as SdkKeyValue;
    use opentelemetry::trace::{
        Span as _, SpanKind as SdkSpanKind, Status as SdkStatus, TraceContextExt, Tracer, TracerProvider,
    };
    use opentelemetry_otlp::WithExportConfig;

    let receiver = OtlpReceiver::start().await;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(receiver.endpoint())
        .build()
        .expect("build the OTLP exporter");
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name("testkit-roundtrip").build())
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("breakwater-testkit");

    let parent = tracer.span_builder("handle").with_kind(SdkSpanKind::Server).start(&tracer);
    let cx = opentelemetry::Context::current_with_span(parent);
    let mut child = tracer.start_with_context("call", &cx);
    child.set_attribute(SdkKeyValue::new("attempt", 2_i64));
    child.add_event("retrying", Vec::new());
    child.set_status(SdkStatus::error("boom"));
    child.end();
    cx.span().end();
    let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await.expect("flush task");
    flushed.expect("flush reaches the receiver");

    let spans = receiver.wait_for_spans(Duration::from_secs(10), |spans| spans.len() == 2).await;
    let handle = spans.iter().find(|s| s.name == "handle").expect("the parent span");
    let call = spans.iter().find(|s| s.name == "call").expect("the child span");
    assert_eq!(handle.service_name, "testkit-roundtrip");
    assert_eq!(handle.kind, Kind::Server);
    assert!(handle.is_root());
    assert_eq!(handle.trace_id.len(), 32);
    assert_eq!(handle.span_id.len(), 16);
    assert_eq!(call.trace_id, handle.trace_id);
    assert_eq!(call.parent_span_id, handle.span_id, "{}", tree(&spans, &handle.trace_id));
    assert_eq!(call.kind, Kind::Internal);
    assert_eq!(call.attr("attempt"), Some("2"));
    assert_eq!(call.events, ["retrying"]);
    assert!(call.status_error);
}

#[tokio::test]
async fn stops_on_drop_including_open_connections() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let address = endpoint.trim_start_matches("http://").to_owned();
    let mut client = TraceServiceClient::connect(endpoint).await.expect("connect to the OTLP receiver");
    client.export(request()).await.expect("export before drop");
    drop(receiver);
    crate::eventually(Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(&address).await.is_err().then_some(())
    })
    .await;
    crate::eventually(Duration::from_secs(5), || {
        let mut client = client.clone();
        async move { client.export(request()).await.is_err().then_some(()) }
    })
    .await;
}
