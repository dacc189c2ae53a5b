//! Logging, traces and metrics.
//!
//! Human-readable lines on a terminal, JSON lines otherwise (or with
//! `WINK_LOG_FORMAT=json`); the level comes from `WINK_LOG`, then
//! `RUST_LOG`, defaulting to `info`. Logs always go to stderr, keeping stdout
//! for command output, and pass through a [`Redactor`] first. JSON lines
//! inside a span carry its OpenTelemetry `trace_id` and `span_id`.
//!
//! Spans are exported over OTLP when `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`
//! is set (see [`TraceConfig`] and docs/observability.md).

mod batch_calls;
mod export_layer;
mod json_lines;
mod metrics;
mod otlp;
mod redact;
mod traces;

use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, FilterFn, Targets, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{Layer, Registry};

pub use batch_calls::{BatchCall, BatchOperation, BatchSpans, SpanLink};
pub(crate) use metrics::ModelCallRecord;
pub use metrics::{CircuitState, Metrics, PROMETHEUS_TEXT_CONTENT_TYPE};
pub use redact::{REDACTED, RedactError, RedactingMakeWriter, RedactingWriter, Redactor};
pub use traces::{
    BatchSettings, DEFAULT_EXPORT_TIMEOUT, DEFAULT_SERVICE_NAME, OtlpCompression, OtlpProtocol, TraceConfig,
    TraceConfigError, TraceparentError, continue_trace, parse_traceparent, trace_ids, traceparent,
};

/// Output format for log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, for terminals.
    Text,
    /// One JSON object per line, for collectors.
    Json,
}

impl LogFormat {
    /// The format selected by `WINK_LOG_FORMAT` (`json` or `text`), else by
    /// whether stderr is a terminal.
    pub fn from_env() -> Self {
        match std::env::var("WINK_LOG_FORMAT").as_deref() {
            Ok("json") => Self::Json,
            Ok("text") => Self::Text,
            _ if std::io::stderr().is_terminal() => Self::Text,
            _ => Self::Json,
        }
    }
}

/// Errors installing telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The trace export configuration is invalid.
    #[error(transparent)]
    Config(#[from] TraceConfigError),
    /// Another global subscriber was installed first.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// What [`install`] sets up.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// How log lines look.
    pub format: LogFormat,
    /// Scrubs log lines and exported spans.
    pub redactor: Redactor,
    /// Where spans are exported; none: nowhere (ids are still minted for logs).
    pub traces: Option<TraceConfig>,
}

/// The installed telemetry. Call [`Telemetry::shutdown`] before the process
/// exits, or the spans of the last few seconds are lost.
#[derive(Debug)]
pub struct Telemetry {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Export every finished span now. Blocks for up to 5 seconds (an
    /// export still running then goes on in the background, bounded by the
    /// export timeout): call it off the async runtime (e.g. in
    /// `spawn_blocking`). An error means the export failed or timed out.
    pub fn flush(&self) -> Result<(), String> {
        self.provider.force_flush().map_err(|err| err.to_string())
    }

    /// Flush and stop the exporter, waiting at most 5 seconds. Blocks: call
    /// it after the async runtime's work is done but before the runtime is
    /// dropped (the gRPC exporter runs on it).
    pub fn shutdown(self) -> Result<(), String> {
        if !self.exporting {
            return Ok(());
        }
        self.provider
            .shutdown_with_timeout(traces::SHUTDOWN_TIMEOUT)
            .map_err(|err| err.to_string())
    }
}

/// Install logging and tracing as the environment configures them, logging
/// to stderr. With gRPC export it must be called inside a tokio runtime
/// context (`Runtime::enter`).
pub fn init(format: LogFormat, redactor: Redactor) -> Result<Telemetry, TelemetryError> {
    let traces = TraceConfig::from_env()?;
    install(
        TelemetryOptions {
            format,
            redactor,
            traces,
        },
        std::io::stderr,
    )
}

/// Install the global subscriber: redacted log lines to `writer`, and spans
/// to the OTLP exporter when `options.traces` says where.
pub fn install<W>(options: TelemetryOptions, writer: W) -> Result<Telemetry, TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (dispatch, telemetry) = build(options, writer)?;
    tracing::dispatcher::set_global_default(dispatch).map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(telemetry)
}

/// The subscriber [`build`] makes, once it is made, for the parts made
/// before it: the JSON log format looks up OpenTelemetry contexts through
/// it, and the export thread logs its warnings to it. Weak, since the
/// subscriber owns those parts.
type SubscriberSlot = Arc<OnceLock<tracing::dispatcher::WeakDispatch>>;

/// The subscriber [`install`] installs, without installing it (to scope it
/// with `tracing::dispatcher::set_default`, as tests do).
pub fn build<W>(options: TelemetryOptions, writer: W) -> Result<(tracing::Dispatch, Telemetry), TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let dispatch_slot: SubscriberSlot = Arc::new(OnceLock::new());
    let provider = traces::tracer_provider(options.traces.as_ref(), &options.redactor, &dispatch_slot)?;
    let log_layer = log_layer(
        options.format,
        RedactingMakeWriter::new(writer, options.redactor),
        dispatch_slot.clone(),
    );
    let trace_layer = trace_layer(traces::tracer(&provider));
    let batch_tracer = options
        .traces
        .as_ref()
        .filter(|traces| traces.mailbox_spans)
        .map(|traces| batch_calls::BatchTracer {
            tracer: traces::tracer(&provider),
            max_links: traces.max_links_per_span,
        });
    let export_layer = export_layer::ExportLayer::new(trace_layer, batch_tracer);
    let dispatch = tracing::Dispatch::new(Registry::default().with(log_layer).with(export_layer));
    let _ = dispatch_slot.set(dispatch.downgrade());
    let telemetry = Telemetry {
        provider,
        exporting: options.traces.is_some(),
    };
    Ok((dispatch, telemetry))
}

/// The layer that makes the host's spans OpenTelemetry spans, recorded with
/// `tracer`, behind the filter of what becomes OpenTelemetry data.
fn trace_layer<S>(tracer: opentelemetry_sdk::trace::SdkTracer) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    // Only attributes a backend makes use of: no source location, thread,
    // Rust module path (`target`) or busy/idle time (`busy_ns`, `idle_ns`),
    // three of every span's dozen attributes, paid for in export time.
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        // Spans find their parent through tracing's own span tree, and the
        // host reads OpenTelemetry contexts from tracing spans
        // (`traceparent`, `trace_ids`), never from the thread's current
        // OpenTelemetry context: keeping that current would cost an attach
        // and a detach each time a job's future is polled.
        .with_context_activation(false)
        .with_filter(trace_targets())
}

/// What becomes OpenTelemetry data, whatever the log level: the host's own
/// spans at info and above; as span events, the host's warnings and errors
/// (limit hits, policy denials, retries, dead letters) and guests' log
/// records. The host's routine info lines (`job succeeded`, `tool call
/// succeeded`) stay in the logs: the span's status and duration say the
/// same, and as events they made a fifth of every job's exported bytes.
/// Dependencies (the exporter's HTTP stack above all) stay out.
///
/// A plain function of the callsite's metadata, so tracing caches the
/// answer per callsite.
fn trace_targets() -> FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    let spans = Targets::new().with_target("wink_host", Level::INFO);
    let events = Targets::new()
        .with_target("wink_host", Level::WARN)
        .with_target("guest", Level::INFO);
    filter_fn(move |meta| {
        let wanted = if meta.is_span() { &spans } else { &events };
        wanted.would_enable(meta.target(), meta.level())
    })
}

fn log_layer<W>(
    format: LogFormat,
    writer: RedactingMakeWriter<W>,
    dispatch: Arc<OnceLock<tracing::dispatcher::WeakDispatch>>,
) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = std::env::var("WINK_LOG")
        .ok()
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // The host's spans stay enabled at any level, so that a warning logged
    // inside a job still carries the job's ids.
    let filter = filter_fn(|meta| meta.is_span() && meta.target().starts_with("wink_host")).or(filter);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_span_events(FmtSpan::NONE);
    match format {
        // The span list carries the job's ids on lines logged inside nested
        // spans (a tool call inside a job), not only the innermost span's fields.
        LogFormat::Json => layer
            .fmt_fields(json_lines::JsonSpanFields)
            .event_format(json_lines::JsonLines { dispatch })
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => layer.with_filter(filter).boxed(),
    }
}

/// A log sink for this module's tests, keeping every line written to it.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct TestSink(Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl TestSink {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        String::from_utf8(bytes).expect("log lines are UTF-8")
    }
}

#[cfg(test)]
impl std::io::Write for TestSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `args` formatted and cut to `limit` bytes (on a character boundary),
/// with `…` added when cut. Formatting stops at the limit, so text a guest
/// chose costs the host no more than `limit` bytes, however long it is.
pub(crate) fn clipped(args: std::fmt::Arguments<'_>, limit: usize) -> String {
    struct Bounded {
        text: String,
        limit: usize,
        cut: bool,
    }
    impl std::fmt::Write for Bounded {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = self.limit - self.text.len();
            if s.len() <= room {
                self.text.push_str(s);
                return Ok(());
            }
            self.text.push_str(&s[..s.floor_char_boundary(room)]);
            self.cut = true;
            // Stops the formatting: nothing more would be kept.
            Err(std::fmt::Error)
        }
    }
    let mut bounded = Bounded {
        text: String::new(),
        limit,
        cut: false,
    };
    // The only error is the one that stops at the limit.
    let _ = std::fmt::write(&mut bounded, args);
    if bounded.cut {
        bounded.text.push('…');
    }
    bounded.text
}

#[cfg(test)]
mod clipped_tests {
    use super::clipped;

    #[test]
    fn text_is_cut_at_the_limit_on_a_character_boundary_and_marked() {
        assert_eq!(clipped(format_args!("{}", "short"), 8), "short");
        assert_eq!(clipped(format_args!("{}", "exactly8"), 8), "exactly8");
        // "é" is two bytes: the cut falls before it.
        assert_eq!(clipped(format_args!("{}{}", "abc", "dé"), 5), "abcd…");
        assert_eq!(clipped(format_args!("{:?}", "a\nb"), 4), "\"a\\n…");
        let long = "x".repeat(1 << 20);
        assert_eq!(clipped(format_args!("{long}"), 10).len(), 10 + '…'.len_utf8());
    }
}
