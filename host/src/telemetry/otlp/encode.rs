//! The OTLP trace protobuf, written straight from the SDK's span data.
//!
//! opentelemetry-otlp first converts each span into the generated protobuf
//! structs (a fresh `String` per attribute value, a `Vec` per attribute
//! list) and then encodes those, measuring every nested message before
//! writing it. This encoder writes the wire format in one pass over the
//! borrowed span and redacts strings as it goes; a round trip through the
//! generated types in the tests checks it against opentelemetry-proto's own
//! conversion.
//!
//! Each span is encoded on its own ([`span`]), as it ends or on the export
//! thread; a request then wraps the encoded spans of each instrumentation
//! scope ([`request`]).

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

use crate::telemetry::Redactor;

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Append an `ExportTraceServiceRequest` to `out`: one `ResourceSpans`
/// with `resource` (from [`resource`]) and, per instrumentation scope, the
/// spans [`span`] encoded for it.
pub(super) fn request<'a>(
    out: &mut Vec<u8>,
    resource: &[u8],
    scopes: impl IntoIterator<Item = (&'a InstrumentationScope, &'a [u8])>,
    redactor: &Redactor,
) {
    sized_message(out, 1, 3, |out| {
        out.extend_from_slice(resource);
        for (scope, spans) in scopes {
            sized_message(out, 2, 3, |out| scope_spans(out, scope, spans, redactor));
        }
    });
}

/// Append `span` to `out` as the `spans` field (2) of a `ScopeSpans`,
/// strings redacted.
pub(super) fn span(out: &mut Vec<u8>, span: &SpanData, redactor: &Redactor) {
    sized_message(out, 2, 2, |out| span_fields(out, span, redactor));
}

/// The `resource` (field 1) and `schema_url` (field 3) of a `ResourceSpans`.
pub(super) fn resource(resource: &Resource, redactor: &Redactor) -> Vec<u8> {
    let mut out = Vec::new();
    message(&mut out, 1, |out| {
        for (key, value) in resource.iter() {
            message(out, 1, |out| key_value(out, key.as_str(), value, redactor));
        }
    });
    string(&mut out, 3, resource.schema_url().unwrap_or_default());
    out
}

/// What comes before the spans in a request whose spans all belong to
/// `scope` and take `spans_len` bytes: as [`request`] would write it, up to
/// where the spans start. [`scope_trailer`] goes after them. The spans can
/// then stay where they were encoded, the request written around them.
pub(super) fn request_head(
    out: &mut Vec<u8>,
    resource: &[u8],
    scope: &InstrumentationScope,
    spans_len: usize,
    redactor: &Redactor,
) {
    let mut scope_fields = Vec::new();
    scope_message(&mut scope_fields, scope, redactor);
    let trailer_len = string_size(scope.schema_url().unwrap_or_default());
    let scope_spans_len = scope_fields.len() + spans_len + trailer_len;
    tag(out, 1, LEN);
    varint(out, (resource.len() + len_field_size(scope_spans_len)) as u64);
    out.extend_from_slice(resource);
    tag(out, 2, LEN);
    varint(out, scope_spans_len as u64);
    out.extend_from_slice(&scope_fields);
}

/// What comes after the spans of `scope` in a request: its schema URL.
pub(super) fn scope_trailer(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    string(out, 3, scope.schema_url().unwrap_or_default());
}

fn scope_spans(out: &mut Vec<u8>, scope: &InstrumentationScope, spans: &[u8], redactor: &Redactor) {
    scope_message(out, scope, redactor);
    out.extend_from_slice(spans);
    scope_trailer(out, scope);
}

/// The `scope` field (1) of a `ScopeSpans`.
fn scope_message(out: &mut Vec<u8>, scope: &InstrumentationScope, redactor: &Redactor) {
    message(out, 1, |out| {
        string(out, 1, scope.name());
        string(out, 2, scope.version().unwrap_or_default());
        attributes(out, 3, scope.attributes(), redactor);
    });
}

fn span_fields(out: &mut Vec<u8>, span: &SpanData, redactor: &Redactor) {
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
        let key = attribute.key.as_str();
        match &attribute.value {
            Value::String(text) => {
                let text = redactor.redact(text.as_str());
                sized_attribute(out, field, key, len_field_size(text.len()), |out| {
                    string_always(out, 1, &text)
                });
            }
            Value::I64(number) => sized_attribute(out, field, key, 1 + varint_size(*number as u64), |out| {
                int_value(out, *number)
            }),
            Value::Bool(flag) => sized_attribute(out, field, key, 2, |out| bool_value(out, *flag)),
            Value::F64(number) => sized_attribute(out, field, key, 9, |out| double_value(out, *number)),
            value => message(out, field, |out| key_value(out, key, value, redactor)),
        }
    }
}

/// A `KeyValue` as field `field`, whose `AnyValue` fields, which `value`
/// writes, take `value_size` bytes. Nearly every attribute is one string or
/// number: knowing its sizes up front, it is written in one go, with room
/// reserved once and no length to patch in afterwards as [`message`] does.
fn sized_attribute(out: &mut Vec<u8>, field: u32, key: &str, value_size: usize, value: impl FnOnce(&mut Vec<u8>)) {
    let pair_size = string_size(key) + len_field_size(value_size);
    out.reserve(len_field_size(pair_size));
    tag(out, field, LEN);
    varint(out, pair_size as u64);
    string(out, 1, key);
    tag(out, 2, LEN);
    varint(out, value_size as u64);
    let start = out.len();
    value(out);
    debug_assert_eq!(out.len() - start, value_size, "the size given for {key}'s value");
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

#[inline(always)]
fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, u64::from(field << 3 | u32::from(wire_type)));
}

/// Inlined into every caller, which writes a tag or a length that takes one
/// byte nearly always: a call for each would cost more than the byte.
#[inline(always)]
fn varint(out: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        out.push(value as u8);
    } else {
        long_varint(out, value);
    }
}

fn long_varint(out: &mut Vec<u8>, value: u64) {
    let (bytes, size) = varint_array(value);
    out.extend_from_slice(&bytes[..size]);
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

/// The bytes [`string`] writes for `text`: none when it is empty.
fn string_size(text: &str) -> usize {
    if text.is_empty() { 0 } else { len_field_size(text.len()) }
}

/// The bytes a length-delimited field of `len` bytes takes, for fields 1
/// to 15 (whose tag takes one byte).
fn len_field_size(len: usize) -> usize {
    1 + varint_size(len as u64) + len
}

/// The bytes `value` takes as a varint.
fn varint_size(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
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
    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::StringValue;
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

    fn span_data(
        scope: &InstrumentationScope,
        name: &'static str,
        status: Status,
        attributes: Vec<KeyValue>,
    ) -> SpanData {
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

    fn sample_resource() -> Resource {
        Resource::builder_empty()
            .with_service_name("agents")
            .with_attribute(KeyValue::new("deployment.environment", "prod"))
            .build()
    }

    /// What opentelemetry-otlp would send for `batch`.
    fn reference(batch: Vec<SpanData>, redactor: &Redactor) -> ExportTraceServiceRequest {
        let mut batch = batch;
        for span in &mut batch {
            redact_span(redactor, span);
        }
        in_key_order(ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                batch,
                &ResourceAttributesWithSchema::from(&sample_resource()),
            ),
        })
    }

    /// The redaction the encoder makes as it writes, made on the span
    /// itself, so that the reference encoding can be redacted alike.
    fn redact_span(redactor: &Redactor, span: &mut SpanData) {
        redact_attributes(redactor, &mut span.attributes);
        for event in &mut span.events.events {
            if let Cow::Owned(name) = redactor.redact(&event.name) {
                event.name = Cow::Owned(name);
            }
            redact_attributes(redactor, &mut event.attributes);
        }
        if let opentelemetry::trace::Status::Error { description } = &mut span.status
            && let Cow::Owned(redacted) = redactor.redact(description)
        {
            *description = Cow::Owned(redacted);
        }
    }

    fn redact_attributes(redactor: &Redactor, attributes: &mut [KeyValue]) {
        let redact = |text: &StringValue| match redactor.redact(text.as_str()) {
            Cow::Owned(redacted) => Some(StringValue::from(redacted)),
            Cow::Borrowed(_) => None,
        };
        for attribute in attributes {
            match &mut attribute.value {
                Value::String(text) => {
                    if let Some(redacted) = redact(text) {
                        *text = redacted;
                    }
                }
                Value::Array(Array::String(texts)) => {
                    for text in texts {
                        if let Some(redacted) = redact(text) {
                            *text = redacted;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// As the processor sends `batch`: each span encoded on its own, then
    /// grouped by scope in a request.
    fn encode(batch: &[SpanData], redactor: &Redactor) -> Vec<u8> {
        let mut scopes: Vec<(&InstrumentationScope, Vec<u8>)> = Vec::new();
        for data in batch {
            let index = match scopes
                .iter()
                .position(|(scope, _)| **scope == data.instrumentation_scope)
            {
                Some(index) => index,
                None => {
                    scopes.push((&data.instrumentation_scope, Vec::new()));
                    scopes.len() - 1
                }
            };
            span(&mut scopes[index].1, data, redactor);
        }
        let mut out = Vec::new();
        let resource = resource(&sample_resource(), redactor);
        request(
            &mut out,
            &resource,
            scopes.iter().map(|(scope, spans)| (*scope, spans.as_slice())),
            redactor,
        );
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
            span_data(
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
                    KeyValue::new("", "no key"),
                    KeyValue::new("k".repeat(200), i64::MIN),
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
            span_data(&other, "other", Status::Ok, vec![]),
            span_data(
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
    fn a_head_and_trailer_around_one_scope_s_spans_make_the_same_request() {
        let redactor = Redactor::new([], []).expect("redactor");
        let resource = resource(&sample_resource(), &redactor);
        let scopes = [
            InstrumentationScope::builder("wink-host").build(),
            InstrumentationScope::builder("other")
                .with_version("1.2.3")
                .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
                .with_attributes([KeyValue::new("a", true)])
                .build(),
        ];
        for scope in &scopes {
            for count in [0, 1, 300] {
                let mut spans = Vec::new();
                for _ in 0..count {
                    span(&mut spans, &span_data(scope, "job", Status::Ok, vec![]), &redactor);
                }
                let mut whole = Vec::new();
                request(&mut whole, &resource, [(scope, spans.as_slice())], &redactor);
                let mut around = Vec::new();
                request_head(&mut around, &resource, scope, spans.len(), &redactor);
                around.extend_from_slice(&spans);
                scope_trailer(&mut around, scope);
                assert_eq!(around, whole, "{} with {count} spans", scope.name());
            }
        }
    }

    #[test]
    fn varint_sizes_are_what_is_written() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(varint_size(value), varint_array(value).1, "{value}");
        }
    }

    #[test]
    fn a_full_batch_round_trips() {
        let redactor = Redactor::new([], []).expect("redactor");
        let host = InstrumentationScope::builder("wink-host").build();
        let attributes: Vec<KeyValue> = (0..20).map(|i| KeyValue::new(format!("key.{i}"), "value")).collect();
        let batch: Vec<SpanData> = (0..512)
            .map(|_| span_data(&host, "process jobs", Status::Unset, attributes.clone()))
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

    #[test]
    fn the_reference_redaction_scrubs_strings_and_string_arrays() {
        let redactor = Redactor::new([], []).expect("redactor");
        let mut attributes = vec![
            KeyValue::new("error", "denied for AKIAIOSFODNN7EXAMPLE"),
            KeyValue::new("count", 3),
            KeyValue::new(
                "list",
                Value::Array(Array::String(vec!["Authorization: Bearer abcdefghijkl".into()])),
            ),
        ];
        redact_attributes(&redactor, &mut attributes);
        assert_eq!(attributes[0].value.as_str(), "denied for [REDACTED]");
        assert_eq!(attributes[1].value, Value::I64(3));
        assert_eq!(attributes[2].value.as_str(), r#"["Authorization: [REDACTED]"]"#);
    }
}
