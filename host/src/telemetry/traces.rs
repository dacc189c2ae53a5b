//! OpenTelemetry traces: configuration from the standard `OTEL_*`
//! variables, the OTLP exporter (gRPC or HTTP/protobuf), W3C `traceparent`
//! continuation, and trace ids for log lines.
//!
//! Spans are exported in batches from a background thread. Ending a span
//! only queues it (and drops it when the queue is full), so a slow or
//! unreachable collector costs jobs nothing: it only loses spans.

use std::ops::Range;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::Redactor;

/// Service name when neither `OTEL_SERVICE_NAME` nor `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE_NAME: &str = "wink-host";

/// Export timeout when `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` is unset (the
/// OpenTelemetry default).
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Telemetry::shutdown`](super::Telemetry::shutdown) waits for the
/// last spans to leave.
pub(super) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (`grpc`, conventionally port 4317).
    Grpc,
    /// Protobuf over HTTP POST (`http/protobuf`, conventionally port 4318): the default.
    HttpProtobuf,
}

impl OtlpProtocol {
    fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            "http/json" => Err("http/json is not supported; use grpc or http/protobuf".into()),
            _ => Err("expected grpc or http/protobuf".into()),
        }
    }

    /// The name the `OTEL_EXPORTER_OTLP_PROTOCOL` variable uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

/// How export requests are compressed (`OTEL_EXPORTER_OTLP_COMPRESSION`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OtlpCompression {
    /// Sent as encoded (`none`): the default.
    #[default]
    None,
    /// Gzip (`gzip`): HTTP's `Content-Encoding`, gRPC's `grpc-encoding`.
    /// It costs the export thread CPU and saves bandwidth to a collector
    /// across a network.
    Gzip,
}

impl OtlpCompression {
    fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "none" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip),
            _ => Err("expected gzip or none".into()),
        }
    }
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceConfig {
    /// The full URL spans are sent to (for HTTP, including `/v1/traces`).
    pub endpoint: String,
    /// The transport.
    pub protocol: OtlpProtocol,
    /// Extra request headers (gRPC metadata), e.g. an API key.
    pub headers: Vec<(String, String)>,
    /// Time allowed for one export, connecting and retries included.
    pub timeout: Duration,
    /// How requests are compressed.
    pub compression: OtlpCompression,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Further resource attributes.
    pub resource_attributes: Vec<(String, String)>,
    /// How spans wait and leave in batches.
    pub batch: BatchSettings,
    /// Whether a worker's claims and batches of acks are spans of their own
    /// (`WINK_TRACE_MAILBOX_SPANS`, default true), linked to the job spans
    /// they served. About two more spans per job when jobs are few at a
    /// time: trivial high-rate jobs may do without them.
    pub mailbox_spans: bool,
    /// Most links a span keeps (`OTEL_SPAN_LINK_COUNT_LIMIT`, default 128,
    /// as the specification's); the SDK drops the rest. A worker acks no
    /// more jobs in one batch than its ack span can link.
    pub max_links_per_span: usize,
}

/// How spans are batched for export, from the standard `OTEL_BSP_*`
/// variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Spans that may wait for export; further ones are dropped
    /// (`OTEL_BSP_MAX_QUEUE_SIZE`, default 8192).
    pub max_queue_size: usize,
    /// Spans per export request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default
    /// 512); a full batch leaves at once, as does one of 1 MiB.
    pub max_export_batch_size: usize,
    /// Longest a span waits for its batch to fill up
    /// (`OTEL_BSP_SCHEDULE_DELAY`, milliseconds, default 5000).
    pub schedule_delay: Duration,
}

impl Default for BatchSettings {
    /// The OpenTelemetry defaults but for a queue four times theirs: at
    /// tens of thousands of spans a second their 2048 overflows while a
    /// gRPC export is in flight on busy cores, and a queue costs memory
    /// only while it holds spans (and for the few emptied batches kept
    /// for reuse after). Batches keep their size: larger ones take
    /// the export thread less CPU per span, but their buffers, cycling
    /// through the job threads' caches, cost those threads as much again.
    fn default() -> Self {
        Self {
            max_queue_size: 8192,
            max_export_batch_size: 512,
            schedule_delay: Duration::from_secs(5),
        }
    }
}

impl BatchSettings {
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, TraceConfigError> {
        let defaults = Self::default();
        let count = |name: &'static str| first_parsed(&var, &[name], positive_count);
        let max_queue_size = count("OTEL_BSP_MAX_QUEUE_SIZE")?.unwrap_or(defaults.max_queue_size);
        let max_export_batch_size = count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?.unwrap_or(defaults.max_export_batch_size);
        if max_export_batch_size > max_queue_size {
            return Err(invalid(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                &max_export_batch_size.to_string(),
                format!("must not exceed the queue size, {max_queue_size} (OTEL_BSP_MAX_QUEUE_SIZE)"),
            ));
        }
        let schedule_delay =
            first_parsed(&var, &["OTEL_BSP_SCHEDULE_DELAY"], positive_milliseconds)?.unwrap_or(defaults.schedule_delay);
        Ok(Self {
            max_queue_size,
            max_export_batch_size,
            schedule_delay,
        })
    }
}

fn boolean(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn positive_count(value: &str) -> Result<usize, String> {
    count(value)
        .ok()
        .filter(|count| *count > 0)
        .ok_or_else(|| "expected a positive whole number".into())
}

fn count(value: &str) -> Result<usize, String> {
    value
        .trim()
        .parse::<usize>()
        .map_err(|_| "expected a whole number".into())
}

fn milliseconds(value: &str) -> Result<Duration, String> {
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| "expected milliseconds".into())
}

fn positive_milliseconds(value: &str) -> Result<Duration, String> {
    milliseconds(value)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| "expected milliseconds, above 0".into())
}

/// Bad trace export configuration.
#[derive(Debug, thiserror::Error)]
pub enum TraceConfigError {
    /// A variable holds a value that cannot be used.
    #[error("invalid {var}={value:?}: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The exporter could not be built from an otherwise valid configuration.
    #[error("cannot set up OTLP trace export to {endpoint}: {reason}")]
    Exporter {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

/// The environment variables read, by the role they play. Each list is in
/// order of precedence: the signal-specific variable first.
const ENDPOINT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];
const PROTOCOL_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"];
const TIMEOUT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"];
const COMPRESSION_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
];
/// Headers merge: general ones first, then signal-specific ones override.
pub(super) const HEADER_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"];

/// The specification's default `OTEL_SPAN_LINK_COUNT_LIMIT`.
const DEFAULT_MAX_LINKS_PER_SPAN: usize = 128;

impl TraceConfig {
    /// Export to `endpoint` (the full URL) with default settings.
    pub fn new(endpoint: impl Into<String>, protocol: OtlpProtocol) -> Self {
        Self {
            endpoint: endpoint.into(),
            protocol,
            headers: Vec::new(),
            timeout: DEFAULT_EXPORT_TIMEOUT,
            compression: OtlpCompression::None,
            service_name: DEFAULT_SERVICE_NAME.into(),
            resource_attributes: Vec::new(),
            batch: BatchSettings::default(),
            mailbox_spans: true,
            max_links_per_span: DEFAULT_MAX_LINKS_PER_SPAN,
        }
    }

    /// The configuration the process environment describes; none when no
    /// endpoint is set, `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`.
    pub fn from_env() -> Result<Option<Self>, TraceConfigError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`Self::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, TraceConfigError> {
        // Unset and empty mean the same, as the specification asks.
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match var("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => return Err(invalid("OTEL_TRACES_EXPORTER", other, "expected otlp or none")),
        }
        let protocol = first_parsed(var, &PROTOCOL_VARS, OtlpProtocol::parse)?.unwrap_or(OtlpProtocol::HttpProtobuf);
        let Some((endpoint_var, endpoint)) = first(var, &ENDPOINT_VARS) else {
            return Ok(None);
        };
        let endpoint = endpoint.trim().to_owned();
        check_endpoint(&endpoint, protocol).map_err(|reason| invalid(endpoint_var, &shown(&endpoint), reason))?;
        // The general endpoint is a base URL: HTTP appends the signal's path.
        let endpoint = if endpoint_var == ENDPOINT_VARS[1] && protocol == OtlpProtocol::HttpProtobuf {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        } else {
            endpoint
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        for name in HEADER_VARS {
            for (key, value) in parse_pairs(name, var(name).as_deref())? {
                headers.retain(|(existing, _)| !existing.eq_ignore_ascii_case(&key));
                headers.push((key, value));
            }
        }
        let timeout = first_parsed(var, &TIMEOUT_VARS, milliseconds)?.unwrap_or(DEFAULT_EXPORT_TIMEOUT);
        let compression = first_parsed(var, &COMPRESSION_VARS, OtlpCompression::parse)?.unwrap_or_default();
        let mut resource_attributes =
            parse_pairs("OTEL_RESOURCE_ATTRIBUTES", var("OTEL_RESOURCE_ATTRIBUTES").as_deref())?;
        let from_attributes = resource_attributes
            .iter()
            .position(|(key, _)| key == "service.name")
            .map(|index| resource_attributes.remove(index).1);
        let service_name = var("OTEL_SERVICE_NAME")
            .map(|name| name.trim().to_owned())
            .or(from_attributes)
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.into());
        Ok(Some(Self {
            endpoint,
            protocol,
            headers,
            timeout,
            compression,
            service_name,
            resource_attributes,
            batch: BatchSettings::from_vars(var)?,
            mailbox_spans: first_parsed(var, &["WINK_TRACE_MAILBOX_SPANS"], boolean)?.unwrap_or(true),
            max_links_per_span: first_parsed(var, &["OTEL_SPAN_LINK_COUNT_LIMIT"], count)?
                .unwrap_or(DEFAULT_MAX_LINKS_PER_SPAN),
        }))
    }
}

fn invalid(var: &'static str, value: &str, reason: impl Into<String>) -> TraceConfigError {
    TraceConfigError::Invalid {
        var,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn first(var: impl Fn(&str) -> Option<String>, names: &[&'static str]) -> Option<(&'static str, String)> {
    names.iter().find_map(|name| var(name).map(|value| (*name, value)))
}

/// The first of `names` that is set, parsed; a bad value is named with its
/// variable.
fn first_parsed<T>(
    var: impl Fn(&str) -> Option<String>,
    names: &[&'static str],
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, TraceConfigError> {
    first(var, names)
        .map(|(name, value)| parse(&value).map_err(|reason| invalid(name, &value, reason)))
        .transpose()
}

fn check_endpoint(endpoint: &str, protocol: OtlpProtocol) -> Result<(), String> {
    let url = url::Url::parse(endpoint).map_err(|err| format!("not a URL: {err}"))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(format!("unsupported scheme {other:?}; expected http or https")),
    }
    if protocol == OtlpProtocol::Grpc && has_credentials(endpoint) {
        return Err(GRPC_CREDENTIALS_REFUSED.into());
    }
    Ok(())
}

/// Why a gRPC endpoint with credentials is refused: gRPC would send them
/// as the request's authority, in the clear over `http://`. (HTTP export
/// sends them as basic authentication.)
pub(super) const GRPC_CREDENTIALS_REFUSED: &str =
    "a gRPC endpoint cannot carry credentials; send them in OTEL_EXPORTER_OTLP_HEADERS";

/// Whether `endpoint` holds credentials (`user:secret@` before its host).
pub(super) fn has_credentials(endpoint: &str) -> bool {
    credentials(endpoint).is_some()
}

/// `endpoint` fit for a message: without the credentials it may hold, even
/// when it is not a valid URL.
fn shown(endpoint: &str) -> String {
    let mut shown = endpoint.to_owned();
    if let Some(credentials) = credentials(endpoint) {
        shown.replace_range(credentials, "");
    }
    shown
}

/// Where the credentials of `endpoint` are, `@` included: the authority
/// (after `://`, before the path) up to its last `@`.
fn credentials(endpoint: &str) -> Option<Range<usize>> {
    let start = endpoint.find("://")? + "://".len();
    let rest = &endpoint[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let at = authority.rfind('@')?;
    Some(start..start + at + 1)
}

/// `key=value` pairs separated by commas, values percent-encoded: the format
/// of `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES`.
pub(super) fn parse_pairs(var: &'static str, text: Option<&str>) -> Result<Vec<(String, String)>, TraceConfigError> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid(var, text, format!("{pair:?} is not key=value")))?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| invalid(var, text, format!("the value of {:?} is not UTF-8", key.trim())))?;
            match key.trim() {
                "" => Err(invalid(var, text, format!("{pair:?} has an empty key"))),
                key => Ok((key.to_owned(), value.into_owned())),
            }
        })
        .collect()
}

/// The tracer provider for `config`: exporting in batches when there is a
/// configuration, else recording nothing but still minting trace and span
/// ids, so that log lines correlate with the caller's trace either way.
pub(super) fn tracer_provider(
    config: Option<&TraceConfig>,
    redactor: &Redactor,
    subscriber: &super::SubscriberSlot,
) -> Result<SdkTracerProvider, TraceConfigError> {
    let Some(config) = config else {
        return Ok(SdkTracerProvider::builder().with_sampler(Sampler::AlwaysOff).build());
    };
    let exporter_error = |reason: String| TraceConfigError::Exporter {
        endpoint: shown(&config.endpoint),
        reason,
    };
    let headers = header_map(&config.headers).map_err(exporter_error)?;
    let resource = Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attributes(
            config
                .resource_attributes
                .iter()
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
        )
        .build();
    // The sampler stays the SDK's (parent-based always-on, or OTEL_TRACES_SAMPLER).
    let builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_max_links_per_span(u32::try_from(config.max_links_per_span).unwrap_or(u32::MAX));
    let processor =
        super::otlp::processor(config, headers, redactor.clone(), subscriber.clone()).map_err(exporter_error)?;
    let builder = builder.with_span_processor(processor);
    Ok(builder.build())
}

/// Validate headers as HTTP headers (gRPC metadata is the same).
fn header_map(headers: &[(String, String)]) -> Result<http::HeaderMap, String> {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for (key, value) in headers {
        let name = http::HeaderName::from_bytes(key.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("{key:?} is not a valid header name"))?;
        // The value is a secret: never echo it.
        let value =
            http::HeaderValue::from_str(value).map_err(|_| format!("the value of header {key:?} is invalid"))?;
        map.insert(name, value);
    }
    Ok(map)
}

/// Why a `traceparent` cannot be continued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent {value:?}: {reason}")]
pub struct TraceparentError {
    value: String,
    reason: &'static str,
}

/// Parse a W3C `traceparent` header value into the remote span context it names.
pub fn parse_traceparent(value: &str) -> Result<SpanContext, TraceparentError> {
    let error = |reason| TraceparentError {
        value: value.to_owned(),
        reason,
    };
    let parts: Vec<&str> = value.trim().split('-').collect();
    let [version, trace_id, parent_id, flags, rest @ ..] = parts.as_slice() else {
        return Err(error("expected version-traceid-parentid-flags"));
    };
    let is_hex = |text: &str, len: usize| {
        text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !is_hex(version, 2) || *version == "ff" {
        return Err(error("the version is not two lower-case hex digits other than ff"));
    }
    // Version 00 has exactly four fields; later versions may append more.
    if *version == "00" && !rest.is_empty() {
        return Err(error("version 00 has exactly four fields"));
    }
    if !is_hex(trace_id, 32) || !is_hex(parent_id, 16) || !is_hex(flags, 2) {
        return Err(error("the ids and flags must be 32, 16 and 2 lower-case hex digits"));
    }
    let trace_id = TraceId::from_hex(trace_id).map_err(|_| error("bad trace id"))?;
    let span_id = SpanId::from_hex(parent_id).map_err(|_| error("bad parent id"))?;
    let flags = u8::from_str_radix(flags, 16).map_err(|_| error("bad flags"))?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return Err(error("all-zero ids are invalid"));
    }
    Ok(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// Make `span` a child of the caller's span named by `traceparent` (W3C
/// format), so the trace continues across the queue or RPC that carried it.
///
/// Call it right after creating the span, before it is entered or logged
/// into (from then on its parent is fixed). Without a `traceparent` the
/// span stays a root (or the child of the current span). An invalid one is
/// ignored with a warning naming it: the work goes on in a new trace.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    match parse_traceparent(traceparent) {
        Ok(remote) => {
            let parent = opentelemetry::Context::new().with_remote_span_context(remote);
            if let Err(err) = span.set_parent(parent) {
                tracing::debug!(parent: span, error = %err, "cannot continue the caller's trace");
            }
        }
        Err(err) => tracing::warn!(parent: span, error = %err, "ignoring the caller's traceparent"),
    }
}

/// The W3C `traceparent` of `span`, to pass the trace on to work it causes
/// (a queued message, an outbound request). None when tracing is not
/// installed or the span is disabled.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// The trace and span ids of `span`, when tracing is installed.
pub fn trace_ids(span: &tracing::Span) -> Option<(TraceId, SpanId)> {
    context_ids(&span.context())
}

/// The trace and span ids of `context`'s span, when they are valid.
pub(super) fn context_ids(context: &opentelemetry::Context) -> Option<(TraceId, SpanId)> {
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| (span_context.trace_id(), span_context.span_id()))
}

/// The tracer wink-host's spans are recorded with.
pub(super) fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::SdkTracer {
    provider.tracer("wink-host")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert_eq!(TraceConfig::from_vars(vars(&[])).expect("ok"), None);
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(
            TraceConfig::from_vars(vars(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])).expect("ok"),
            None
        );
        assert_eq!(
            TraceConfig::from_vars(vars(&[endpoint, ("OTEL_SDK_DISABLED", "true")])).expect("ok"),
            None
        );
        assert_eq!(
            TraceConfig::from_vars(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])).expect("ok"),
            None
        );
    }

    #[test]
    fn reads_the_standard_variables_with_their_precedence() {
        let config = TraceConfig::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://api.example.test/otel/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=abc%3D%3D, project=p1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "Project=p2"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attrs,deployment.environment=prod%20eu",
            ),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "4096"),
            ("OTEL_BSP_SCHEDULE_DELAY", " 250 "),
            ("WINK_TRACE_MAILBOX_SPANS", "False"),
            ("OTEL_SPAN_LINK_COUNT_LIMIT", "16"),
        ]))
        .expect("valid")
        .expect("on");
        assert!(!config.mailbox_spans);
        assert_eq!(config.max_links_per_span, 16);
        assert_eq!(config.endpoint, "https://api.example.test/otel/v1/traces");
        assert_eq!(config.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            config.headers,
            [
                ("x-api-key".to_owned(), "abc==".to_owned()),
                ("Project".into(), "p2".into())
            ]
        );
        assert_eq!(config.timeout, Duration::from_millis(2500));
        assert_eq!(config.compression, OtlpCompression::Gzip);
        assert_eq!(config.service_name, "from-attrs");
        assert_eq!(
            config.resource_attributes,
            [("deployment.environment".to_owned(), "prod eu".to_owned())]
        );
        assert_eq!(
            config.batch,
            BatchSettings {
                max_queue_size: 4096,
                max_export_batch_size: 512,
                schedule_delay: Duration::from_millis(250),
            }
        );

        let grpc = TraceConfig::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "agents"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=ignored"),
        ]))
        .expect("valid")
        .expect("on");
        assert_eq!(
            grpc.endpoint, "http://collector:4317",
            "the signal endpoint is used as is"
        );
        assert_eq!(grpc.protocol, OtlpProtocol::Grpc);
        assert_eq!(grpc.service_name, "agents");
        assert_eq!(grpc.timeout, DEFAULT_EXPORT_TIMEOUT);
        assert_eq!(grpc.compression, OtlpCompression::None);
        assert_eq!(grpc.batch, BatchSettings::default());
        assert!(grpc.mailbox_spans, "claims and acks are spans unless turned off");
    }

    #[test]
    fn messages_show_endpoints_without_their_credentials() {
        for (endpoint, shown_as) in [
            (
                "https://tenant:s3cret@collector:4318/v1/traces",
                "https://collector:4318/v1/traces",
            ),
            // Not a valid URL (the port), so not parsed as one.
            ("http://u:p@ss@collector:99999", "http://collector:99999"),
            ("http://collector:4317/a@b", "http://collector:4317/a@b"),
            ("collector:4317", "collector:4317"),
        ] {
            assert_eq!(shown(endpoint), shown_as, "{endpoint}");
        }
        let mut grpc = TraceConfig::new("http://tenant:s3cret@collector:4317", OtlpProtocol::Grpc);
        grpc.timeout = Duration::from_secs(1);
        let err = tracer_provider(
            Some(&grpc),
            &Redactor::new([], []).expect("redactor"),
            &Default::default(),
        )
        .expect_err("credentials refused")
        .to_string();
        assert_eq!(
            err,
            format!("cannot set up OTLP trace export to http://collector:4317: {GRPC_CREDENTIALS_REFUSED}")
        );
    }

    #[test]
    fn bad_values_are_named_in_one_line() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        for (pairs, expected) in [
            (
                vec![endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
                r#"invalid OTEL_EXPORTER_OTLP_PROTOCOL="http/json": http/json is not supported; use grpc or http/protobuf"#,
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
                r#"invalid OTEL_EXPORTER_OTLP_ENDPOINT="collector:4317": unsupported scheme "collector"; expected http or https"#,
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://tenant:s3cret@collector:4317"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ],
                r#"invalid OTEL_EXPORTER_OTLP_ENDPOINT="https://collector:4317": a gRPC endpoint cannot carry credentials; send them in OTEL_EXPORTER_OTLP_HEADERS"#,
            ),
            (
                vec![endpoint, ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")],
                r#"invalid OTEL_EXPORTER_OTLP_HEADERS="novalue": "novalue" is not key=value"#,
            ),
            (
                vec![endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")],
                r#"invalid OTEL_EXPORTER_OTLP_TIMEOUT="10s": expected milliseconds"#,
            ),
            (
                vec![endpoint, ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")],
                r#"invalid OTEL_EXPORTER_OTLP_COMPRESSION="zstd": expected gzip or none"#,
            ),
            (
                vec![endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")],
                r#"invalid OTEL_TRACES_EXPORTER="zipkin": expected otlp or none"#,
            ),
            (
                vec![endpoint, ("OTEL_BSP_MAX_QUEUE_SIZE", "0")],
                r#"invalid OTEL_BSP_MAX_QUEUE_SIZE="0": expected a positive whole number"#,
            ),
            (
                vec![endpoint, ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "9000")],
                r#"invalid OTEL_BSP_MAX_EXPORT_BATCH_SIZE="9000": must not exceed the queue size, 8192 (OTEL_BSP_MAX_QUEUE_SIZE)"#,
            ),
            (
                vec![endpoint, ("OTEL_BSP_SCHEDULE_DELAY", "5s")],
                r#"invalid OTEL_BSP_SCHEDULE_DELAY="5s": expected milliseconds, above 0"#,
            ),
            (
                vec![endpoint, ("OTEL_BSP_SCHEDULE_DELAY", "0")],
                r#"invalid OTEL_BSP_SCHEDULE_DELAY="0": expected milliseconds, above 0"#,
            ),
            (
                vec![endpoint, ("OTEL_SPAN_LINK_COUNT_LIMIT", "-1")],
                r#"invalid OTEL_SPAN_LINK_COUNT_LIMIT="-1": expected a whole number"#,
            ),
            (
                vec![endpoint, ("WINK_TRACE_MAILBOX_SPANS", "off")],
                r#"invalid WINK_TRACE_MAILBOX_SPANS="off": expected true or false"#,
            ),
        ] {
            let err = TraceConfig::from_vars(vars(&pairs)).expect_err("invalid").to_string();
            assert_eq!(err, expected);
        }
    }

    #[test]
    fn traceparents_parse_per_w3c() {
        let remote =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid traceparent");
        assert_eq!(remote.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(remote.span_id().to_string(), "00f067aa0ba902b7");
        assert!(remote.is_sampled() && remote.is_remote());
        let future = parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra").expect("v1");
        assert!(!future.is_sampled());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let err = parse_traceparent(bad).expect_err(bad).to_string();
            assert!(err.starts_with(&format!("invalid traceparent {bad:?}: ")), "{err}");
        }
    }
}
