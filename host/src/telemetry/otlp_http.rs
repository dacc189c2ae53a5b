//! OTLP over HTTP/protobuf, encoded straight from the SDK's span data.
//!
//! opentelemetry-otlp first converts each span into the generated protobuf
//! structs (a fresh `String` per attribute value, a `Vec` per attribute
//! list) and then encodes those, measuring every nested message before
//! writing it; on trivial jobs at 100,000 spans a second, that conversion
//! was half of the export thread's time. This encoder writes the wire
//! format in one pass over the borrowed spans and redacts strings as it
//! goes; a round trip through the generated types in the tests checks it
//! against opentelemetry-proto's own conversion.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry::trace::{SpanContext, SpanId, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::Redactor;
use super::traces::TraceConfig;

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// First wait between attempts of one export; it doubles per attempt.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Attempts per batch, as opentelemetry-otlp makes: a batch the collector
/// cannot take within them is dropped, so that the next one is not held up.
const MAX_ATTEMPTS: u32 = 4;

/// Exports batches of spans to an OTLP/HTTP endpoint as protobuf, retrying
/// throttling and transient failures within the export timeout.
#[derive(Debug)]
pub(super) struct OtlpHttpExporter {
    client: reqwest::blocking::Client,
    endpoint: reqwest::Url,
    headers: http::HeaderMap,
    timeout: Duration,
    redactor: Redactor,
    /// The `resource` and `schema_url` fields of every `ResourceSpans`.
    resource: Vec<u8>,
    /// The last request body's buffer, back from the HTTP client: a batch
    /// is hundreds of kilobytes, and fresh pages for each cost more than
    /// encoding it.
    spare: Arc<Mutex<Vec<u8>>>,
}

impl OtlpHttpExporter {
    /// An exporter for `config` (whose protocol is HTTP/protobuf), with its
    /// headers already validated into `headers`.
    pub(super) fn new(config: &TraceConfig, headers: http::HeaderMap, redactor: Redactor) -> Result<Self, String> {
        let endpoint = reqwest::Url::parse(&config.endpoint).map_err(|err| format!("not a URL: {err}"))?;
        Ok(Self {
            client: blocking_client(config.timeout)?,
            endpoint,
            headers,
            timeout: config.timeout,
            resource: encode_resource(&Resource::builder_empty().build(), &redactor),
            redactor,
            spare: Arc::default(),
        })
    }

    fn post(&self, body: &Bytes) -> Result<(), Failure> {
        // The configured headers come last, so that they replace ours.
        let response = self
            .client
            .post(self.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .headers(self.headers.clone())
            .body(body.clone())
            .send()
            .map_err(|err| Failure {
                retry: !err.is_builder(),
                // The endpoint is in the configuration; its URL may hold credentials.
                message: format!("cannot reach the collector: {}", err.without_url()),
            })?;
        let status = response.status();
        // Read to the end, so that the connection can carry the next batch.
        let _ = response.bytes();
        if status.is_success() {
            return Ok(());
        }
        Err(Failure {
            retry: matches!(status.as_u16(), 429 | 502 | 503 | 504),
            message: format!("the collector answered {status}"),
        })
    }
}

/// A request body that goes back to the exporter once the HTTP client has
/// dropped it.
struct Recycled {
    body: Vec<u8>,
    spare: Arc<Mutex<Vec<u8>>>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        *self.spare.lock().unwrap_or_else(PoisonError::into_inner) = std::mem::take(&mut self.body);
    }
}

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    retry: bool,
    message: String,
}

/// reqwest's blocking client runs its own runtime on a thread of its own;
/// building it from inside the host's tokio runtime would nest runtimes, so
/// it is built on a short-lived plain thread (as opentelemetry-otlp does).
fn blocking_client(timeout: Duration) -> Result<reqwest::blocking::Client, String> {
    std::thread::Builder::new()
        .name("otlp-http-setup".into())
        .spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .user_agent(concat!("wink-host/", env!("CARGO_PKG_VERSION")))
                .build()
        })
        .map_err(|err| format!("cannot start the HTTP client: {err}"))?
        .join()
        .map_err(|_| "building the HTTP client panicked".to_owned())?
        .map_err(|err| format!("cannot build the HTTP client: {err}"))
}

impl SpanExporter for OtlpHttpExporter {
    /// Runs on the batch processor's own thread, so blocking here stalls no
    /// job: it only delays the next batch.
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut body = std::mem::take(&mut *self.spare.lock().unwrap_or_else(PoisonError::into_inner));
        body.clear();
        encode_request(&mut body, &self.resource, &batch, &self.redactor);
        let body = Bytes::from_owner(Recycled {
            body,
            spare: self.spare.clone(),
        });
        drop(batch);
        let deadline = Instant::now() + self.timeout;
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            match self.post(&body) {
                Ok(()) => return Ok(()),
                Err(failure) if failure.retry && attempt < MAX_ATTEMPTS && Instant::now() + delay < deadline => {
                    std::thread::sleep(delay);
                    delay *= 2;
                    attempt += 1;
                }
                Err(failure) => {
                    return Err(OTelSdkError::InternalFailure(format!(
                        "{} (attempt {attempt} of {MAX_ATTEMPTS})",
                        failure.message
                    )));
                }
            }
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = encode_resource(resource, &self.redactor);
    }
}

/// Append an `ExportTraceServiceRequest` carrying `batch` to `out`, grouped
/// by instrumentation scope under the one resource, strings redacted.
fn encode_request(out: &mut Vec<u8>, resource: &[u8], batch: &[SpanData], redactor: &Redactor) {
    let mut scopes: Vec<(&InstrumentationScope, Vec<&SpanData>)> = Vec::new();
    for span in batch {
        match scopes
            .iter_mut()
            .find(|(scope, _)| **scope == span.instrumentation_scope)
        {
            Some((_, spans)) => spans.push(span),
            None => scopes.push((&span.instrumentation_scope, vec![span])),
        }
    }
    // Spans with the host's attributes and an event take under a kilobyte.
    out.reserve(1024 * batch.len() + resource.len() + 64);
    sized_message(out, 1, 3, |out| {
        out.extend_from_slice(resource);
        for (scope, spans) in &scopes {
            sized_message(out, 2, 3, |out| scope_spans(out, scope, spans, redactor));
        }
    });
}

/// The `resource` (field 1) and `schema_url` (field 3) of a `ResourceSpans`.
fn encode_resource(resource: &Resource, redactor: &Redactor) -> Vec<u8> {
    let mut out = Vec::new();
    message(&mut out, 1, |out| {
        for (key, value) in resource.iter() {
            message(out, 1, |out| key_value(out, key.as_str(), value, redactor));
        }
    });
    string(&mut out, 3, resource.schema_url().unwrap_or_default());
    out
}

fn scope_spans(out: &mut Vec<u8>, scope: &InstrumentationScope, spans: &[&SpanData], redactor: &Redactor) {
    message(out, 1, |out| {
        string(out, 1, scope.name());
        string(out, 2, scope.version().unwrap_or_default());
        attributes(out, 3, scope.attributes(), redactor);
    });
    for span in spans {
        sized_message(out, 2, 2, |out| encode_span(out, span, redactor));
    }
    string(out, 3, scope.schema_url().unwrap_or_default());
}

fn encode_span(out: &mut Vec<u8>, span: &SpanData, redactor: &Redactor) {
    ids(out, &span.span_context);
    if span.parent_span_id != SpanId::INVALID {
        bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    string(out, 5, &span.name);
    uint(out, 6, span_kind(&span.span_kind));
    fixed64(out, 7, unix_nanos(span.start_time));
    fixed64(out, 8, unix_nanos(span.end_time));
    attributes(out, 9, &span.attributes, redactor);
    uint(out, 10, span.dropped_attributes_count.into());
    for event in &span.events.events {
        message(out, 11, |out| {
            fixed64(out, 1, unix_nanos(event.timestamp));
            string(out, 2, &redactor.redact(&event.name));
            attributes(out, 3, &event.attributes, redactor);
            uint(out, 4, event.dropped_attributes_count.into());
        });
    }
    uint(out, 12, span.events.dropped_count.into());
    for link in &span.links.links {
        message(out, 13, |out| {
            ids(out, &link.span_context);
            attributes(out, 4, &link.attributes, redactor);
            uint(out, 5, link.dropped_attributes_count.into());
            fixed32(out, 6, span_flags(&link.span_context, link.span_context.is_remote()));
        });
    }
    uint(out, 14, span.links.dropped_count.into());
    message(out, 15, |out| match &span.status {
        Status::Unset => {}
        Status::Ok => uint(out, 3, 1),
        Status::Error { description } => {
            string(out, 2, &redactor.redact(description));
            uint(out, 3, 2);
        }
    });
    fixed32(out, 16, span_flags(&span.span_context, span.parent_span_is_remote));
}

/// The `trace_id` (1), `span_id` (2) and `trace_state` (3) fields, which a
/// span and a link number alike.
fn ids(out: &mut Vec<u8>, context: &SpanContext) {
    bytes(out, 1, &context.trace_id().to_bytes());
    bytes(out, 2, &context.span_id().to_bytes());
    string(out, 3, &context.trace_state().header());
}

/// `SpanFlags`: the W3C trace flags, and whether the parent (for a link:
/// the linked span) is remote.
fn span_flags(context: &SpanContext, remote: bool) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    u32::from(context.trace_flags().to_u8()) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

fn span_kind(kind: &opentelemetry::trace::SpanKind) -> u64 {
    use opentelemetry::trace::SpanKind;
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

fn attributes<'a>(
    out: &mut Vec<u8>,
    field: u32,
    attributes: impl IntoIterator<Item = &'a KeyValue>,
    redactor: &Redactor,
) {
    for attribute in attributes {
        message(out, field, |out| {
            key_value(out, attribute.key.as_str(), &attribute.value, redactor)
        });
    }
}

/// A `KeyValue`: `key` (1) and the `AnyValue` (2).
fn key_value(out: &mut Vec<u8>, key: &str, value: &Value, redactor: &Redactor) {
    string(out, 1, key);
    message(out, 2, |out| any_value(out, value, redactor));
}

/// The fields of an `AnyValue`, a oneof: the one set is written even when
/// it holds its type's default, or the value would read as empty.
fn any_value(out: &mut Vec<u8>, value: &Value, redactor: &Redactor) {
    match value {
        Value::String(text) => string_value(out, text.as_str(), redactor),
        Value::Bool(flag) => bool_value(out, *flag),
        Value::I64(number) => int_value(out, *number),
        Value::F64(number) => double_value(out, *number),
        Value::Array(Array::Bool(values)) => array(out, values, |out, flag| bool_value(out, *flag)),
        Value::Array(Array::I64(values)) => array(out, values, |out, number| int_value(out, *number)),
        Value::Array(Array::F64(values)) => array(out, values, |out, number| double_value(out, *number)),
        Value::Array(Array::String(values)) => {
            array(out, values, |out, text| string_value(out, text.as_str(), redactor))
        }
        // Kinds added to the API after this was written travel as text.
        other => string_value(out, &other.to_string(), redactor),
    }
}

fn string_value(out: &mut Vec<u8>, text: &str, redactor: &Redactor) {
    string_always(out, 1, &redactor.redact(text));
}

fn bool_value(out: &mut Vec<u8>, flag: bool) {
    varint_always(out, 2, u64::from(flag));
}

/// Negative numbers take ten bytes, as int64 fields do.
fn int_value(out: &mut Vec<u8>, number: i64) {
    varint_always(out, 3, number as u64);
}

fn double_value(out: &mut Vec<u8>, number: f64) {
    tag(out, 4, FIXED64);
    out.extend_from_slice(&number.to_bits().to_le_bytes());
}

/// An `ArrayValue` (`AnyValue` field 5): each of `values` as an `AnyValue`
/// (its field 1) that `element` writes.
fn array<T>(out: &mut Vec<u8>, values: &[T], element: impl Fn(&mut Vec<u8>, &T)) {
    message(out, 5, |out| {
        for value in values {
            message(out, 1, |out| element(out, value));
        }
    });
}

fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, u64::from(field << 3 | u32::from(wire_type)));
}

#[inline]
fn varint(out: &mut Vec<u8>, value: u64) {
    // Tags and most lengths take one byte.
    if value < 0x80 {
        out.push(value as u8);
    } else {
        let (bytes, size) = varint_array(value);
        out.extend_from_slice(&bytes[..size]);
    }
}

/// A scalar field, left out at its default (zero) as proto3 does.
fn uint(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        varint_always(out, field, value);
    }
}

fn varint_always(out: &mut Vec<u8>, field: u32, value: u64) {
    tag(out, field, VARINT);
    varint(out, value);
}

fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        tag(out, field, FIXED64);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn fixed32(out: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        tag(out, field, FIXED32);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn string(out: &mut Vec<u8>, field: u32, text: &str) {
    bytes(out, field, text.as_bytes());
}

fn string_always(out: &mut Vec<u8>, field: u32, text: &str) {
    tag(out, field, LEN);
    varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

fn bytes(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    if !data.is_empty() {
        tag(out, field, LEN);
        varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }
}

/// A nested message written by `body`, its length in front: a varint only
/// known afterwards. Room for a one-byte length is set aside, which fits
/// most attributes; a longer message shifts its bytes along.
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    sized_message(out, field, 1, body);
}

/// As [`message`], setting aside `width` bytes for the length: 2 suits a
/// span (128 bytes to 16 KiB), 3 a batch of them (up to 2 MiB), so that
/// the bytes after it seldom have to move.
fn sized_message(out: &mut Vec<u8>, field: u32, width: usize, body: impl FnOnce(&mut Vec<u8>)) {
    tag(out, field, LEN);
    let at = out.len();
    out.resize(at + width, 0);
    body(out);
    let (length, size) = varint_array((out.len() - at - width) as u64);
    if size == width {
        out[at..at + width].copy_from_slice(&length[..size]);
    } else {
        out.splice(at..at + width, length[..size].iter().copied());
    }
}

/// `value` as a varint on the stack: the bytes, and how many are used.
fn varint_array(mut value: u64) -> ([u8; 10], usize) {
    let mut bytes = [0; 10];
    let mut size = 0;
    while value >= 0x80 {
        bytes[size] = value as u8 | 0x80;
        value >>= 7;
        size += 1;
    }
    bytes[size] = value as u8;
    (bytes, size + 1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::trace::{Event, Link, SpanKind, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;

    use super::*;

    fn context(trace: u128, span: u64, remote: bool) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            remote,
            TraceState::from_key_value([("vendor", "value")]).expect("trace state"),
        )
    }

    fn span(scope: &InstrumentationScope, name: &'static str, status: Status, attributes: Vec<KeyValue>) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_nanos(1_764_979_200_123_456_789);
        let mut events = SpanEvents::default();
        events.events.push(Event::new(
            "sandbox limit hit",
            start + Duration::from_micros(5),
            vec![KeyValue::new("limit", "fuel"), KeyValue::new("used", 0)],
            1,
        ));
        events.dropped_count = 2;
        let mut links = SpanLinks::default();
        links
            .links
            .push(Link::new(context(7, 8, true), vec![KeyValue::new("why", "retry")], 0));
        SpanData {
            span_context: context(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, 0x00f0_67aa_0ba9_02b7, false),
            parent_span_id: SpanId::from(42),
            parent_span_is_remote: true,
            span_kind: SpanKind::Consumer,
            name: name.into(),
            start_time: start,
            end_time: start + Duration::from_millis(3),
            attributes,
            dropped_attributes_count: 3,
            events,
            links,
            status,
            instrumentation_scope: scope.clone(),
        }
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_service_name("agents")
            .with_attribute(KeyValue::new("deployment.environment", "prod"))
            .build()
    }

    /// What opentelemetry-otlp would send for `batch`.
    fn reference(batch: Vec<SpanData>, redactor: &Redactor) -> ExportTraceServiceRequest {
        let mut batch = batch;
        for span in &mut batch {
            super::super::traces::redact_span(redactor, span);
        }
        in_key_order(ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &ResourceAttributesWithSchema::from(&resource())),
        })
    }

    fn encode(batch: &[SpanData], redactor: &Redactor) -> Vec<u8> {
        let mut out = Vec::new();
        encode_request(&mut out, &encode_resource(&resource(), redactor), batch, redactor);
        out
    }

    fn decode(encoded: &[u8]) -> ExportTraceServiceRequest {
        in_key_order(ExportTraceServiceRequest::decode(encoded).expect("valid protobuf"))
    }

    /// A resource's attributes have no order (the SDK keeps them in a hash map).
    fn in_key_order(mut request: ExportTraceServiceRequest) -> ExportTraceServiceRequest {
        for resource in request
            .resource_spans
            .iter_mut()
            .filter_map(|spans| spans.resource.as_mut())
        {
            resource.attributes.sort_by(|a, b| a.key.cmp(&b.key));
        }
        request
    }

    #[test]
    fn encodes_what_opentelemetry_proto_would() {
        let redactor = Redactor::new([], []).expect("redactor");
        let host = InstrumentationScope::builder("wink-host").with_version("1.2.3").build();
        let other = InstrumentationScope::builder("other")
            .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
            .with_attributes([KeyValue::new("a", true)])
            .build();
        let batch = vec![
            span(
                &host,
                "process jobs",
                Status::Unset,
                vec![
                    KeyValue::new("text", "plain"),
                    KeyValue::new("empty", ""),
                    KeyValue::new("secret", "key AKIAIOSFODNN7EXAMPLE here"),
                    KeyValue::new("negative", -5),
                    KeyValue::new("zero", 0),
                    KeyValue::new("false", false),
                    KeyValue::new("ratio", 0.25),
                    KeyValue::new("long", "x".repeat(300)),
                    KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
                    KeyValue::new("counts", Value::Array(Array::I64(vec![1, -1]))),
                    KeyValue::new("ratios", Value::Array(Array::F64(vec![0.5]))),
                    KeyValue::new(
                        "texts",
                        Value::Array(Array::String(vec![
                            "a".into(),
                            "Authorization: Bearer abcdefghijkl".into(),
                        ])),
                    ),
                ],
            ),
            span(&other, "other", Status::Ok, vec![]),
            span(
                &host,
                "invoke_agent echo",
                Status::error("denied for AKIAIOSFODNN7EXAMPLE"),
                vec![KeyValue::new("gen_ai.operation.name", "invoke_agent")],
            ),
        ];
        let decoded = decode(&encode(&batch, &redactor));
        assert_eq!(decoded, reference(batch, &redactor));
        let text = format!("{decoded:?}");
        assert!(
            !text.contains("AKIAIOSFODNN7EXAMPLE") && !text.contains("abcdefghijkl"),
            "{text}"
        );
    }

    #[test]
    fn a_full_batch_round_trips() {
        let redactor = Redactor::new([], []).expect("redactor");
        let host = InstrumentationScope::builder("wink-host").build();
        let attributes: Vec<KeyValue> = (0..20).map(|i| KeyValue::new(format!("key.{i}"), "value")).collect();
        let batch: Vec<SpanData> = (0..512)
            .map(|_| span(&host, "process jobs", Status::Unset, attributes.clone()))
            .collect();
        let encoded = encode(&batch, &redactor);
        assert!(encoded.len() > 1 << 14, "a batch this size needs a three-byte length");
        assert_eq!(decode(&encoded), reference(batch, &redactor));
    }

    #[test]
    fn an_empty_batch_is_a_request_with_the_resource_alone() {
        let redactor = Redactor::new([], []).expect("redactor");
        let decoded = decode(&encode(&[], &redactor));
        assert_eq!(decoded, reference(Vec::new(), &redactor));
    }
}
