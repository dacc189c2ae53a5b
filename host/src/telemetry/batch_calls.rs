//! Spans of mailbox calls that serve several jobs at once: a worker's claim
//! of a batch of messages, the acker's batch of acks. Such a call cannot be
//! a child of every job it serves, so, as the OpenTelemetry messaging
//! conventions record batch operations, it is a client span of its own,
//! linked to the jobs' spans: each job span links to the claim that
//! delivered it, and an ack span links to each job span it settled.
//!
//! They are made with the OpenTelemetry tracer itself rather than as
//! tracing spans: whether a claim leaves a span is only known once it
//! returns (an idle worker's long polls find nothing and must leave
//! nothing), and its start is then in the past. Nor are they log lines:
//! the mailbox's failures are logged where they happen.

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry_sdk::trace::SdkTracer;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Carries the exporting tracer in the subscriber (in its
/// [`ExportLayer`](super::export_layer::ExportLayer)), where
/// [`BatchSpans::current`] finds it, when spans and mailbox spans are
/// exported.
pub(super) struct BatchTracer {
    pub(super) tracer: SdkTracer,
    /// The provider's most links per span.
    pub(super) max_links: usize,
}

/// What a batch call does, in the messaging conventions' terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOperation {
    /// Claiming messages: `messaging.operation.type=receive`.
    Claim,
    /// Acking finished jobs: `messaging.operation.type=settle`.
    Ack,
}

impl BatchOperation {
    /// `messaging.operation.name`, and the first word of the span's name.
    fn name(self) -> &'static str {
        match self {
            Self::Claim => "claim",
            Self::Ack => "ack",
        }
    }

    /// `messaging.operation.type`.
    fn operation_type(self) -> &'static str {
        match self {
            Self::Claim => "receive",
            Self::Ack => "settle",
        }
    }
}

/// Records the spans of batch calls to one queue, with the tracer of the
/// subscriber that was current when it was found: a worker looks it up
/// once, not per call, and its spans' names once, not per span.
#[derive(Debug, Clone)]
pub struct BatchSpans {
    tracer: SdkTracer,
    max_links: usize,
    /// `messaging.destination.name`.
    queue: Arc<str>,
    /// The spans' names: `claim {queue}`, `ack {queue}`.
    claim_name: String,
    ack_name: String,
}

impl BatchSpans {
    /// The current subscriber's, for calls to `queue`, when it exports
    /// spans and wants mailbox spans (`WINK_TRACE_MAILBOX_SPANS`).
    pub fn current(queue: &str) -> Option<Self> {
        tracing::dispatcher::get_default(|dispatch| {
            dispatch
                .downcast_ref::<BatchTracer>()
                .map(|found| Self::new(found.tracer.clone(), found.max_links, queue))
        })
    }

    fn new(tracer: SdkTracer, max_links: usize, queue: &str) -> Self {
        Self {
            tracer,
            max_links,
            queue: queue.into(),
            claim_name: format!("{} {queue}", BatchOperation::Claim.name()),
            ack_name: format!("{} {queue}", BatchOperation::Ack.name()),
        }
    }

    /// The span name of `operation` on this queue.
    fn name(&self, operation: BatchOperation) -> &str {
        match operation {
            BatchOperation::Claim => &self.claim_name,
            BatchOperation::Ack => &self.ack_name,
        }
    }

    /// Most jobs one call's span can link (`OTEL_SPAN_LINK_COUNT_LIMIT`);
    /// the SDK would drop links past it.
    pub fn max_links(&self) -> usize {
        self.max_links
    }

    /// Start timing a call.
    pub fn start(&self) -> BatchCall<'_> {
        BatchCall {
            spans: self,
            started: SystemTime::now(),
        }
    }

    /// Link the job `span` to the `claim` that delivered it, and return the
    /// link to `span` for the span of the ack that settles it (none when the
    /// span is not exported: invalid or unsampled). The span's OpenTelemetry
    /// data is looked up once for both, as each lookup walks the
    /// subscriber's layers and its span registry. This starts the span, which
    /// fixes its parent: call it after [`continue_trace`](super::continue_trace).
    pub fn join(&self, span: &tracing::Span, claim: Option<SpanLink>) -> Option<SpanLink> {
        let context = span.context();
        let started = context.span();
        if let Some(claim) = claim.filter(|claim| claim.0.is_valid()) {
            started.add_link(claim.0, Vec::new());
        }
        let job = started.span_context();
        (job.is_valid() && job.is_sampled()).then(|| SpanLink(job.clone()))
    }
}

/// A mailbox call serving several jobs, timed from its start, recorded as a
/// span by [`BatchCall::end`].
#[derive(Debug)]
pub struct BatchCall<'a> {
    spans: &'a BatchSpans,
    started: SystemTime,
}

impl BatchCall<'_> {
    /// Record the call, which just returned, as the queue's span for
    /// `operation` over `messages` messages, linked to `jobs`; `failed` of the
    /// messages were not done (the span is then marked an error). Returns a
    /// link to the new span, for the spans of the jobs a claim delivered.
    pub fn end(
        self,
        operation: BatchOperation,
        messages: usize,
        failed: usize,
        jobs: impl IntoIterator<Item = SpanLink>,
    ) -> SpanLink {
        let attributes = vec![
            KeyValue::new("messaging.operation.type", operation.operation_type()),
            KeyValue::new("messaging.operation.name", operation.name()),
            KeyValue::new(
                "messaging.destination.name",
                opentelemetry::StringValue::from(self.spans.queue.clone()),
            ),
            KeyValue::new(
                "messaging.batch.message_count",
                i64::try_from(messages).unwrap_or(i64::MAX),
            ),
        ];
        let links = jobs.into_iter().map(|job| Link::with_context(job.0)).collect();
        let tracer = &self.spans.tracer;
        let mut span = tracer
            .span_builder(self.spans.name(operation).to_owned())
            .with_kind(SpanKind::Client)
            .with_start_time(self.started)
            .with_attributes(attributes)
            .with_links(links)
            .start_with_context(tracer, &opentelemetry::Context::new());
        if failed > 0 {
            span.set_status(Status::error(format!("{failed} of {messages} failed")));
        }
        let link = SpanLink(span.span_context().clone());
        span.end();
        link
    }
}

/// A link between a job's span and a batch call's.
#[derive(Debug, Clone)]
pub struct SpanLink(SpanContext);

#[cfg(test)]
impl SpanLink {
    /// A link to a sampled span that never was.
    pub(crate) fn sampled_for_tests() -> Self {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        Self(SpanContext::new(
            TraceId::from_bytes([1; 16]),
            SpanId::from_bytes([2; 8]),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::telemetry::{LogFormat, OtlpProtocol, Redactor, TelemetryOptions, TraceConfig, build};

    fn subscriber(traces: Option<TraceConfig>) -> tracing::Dispatch {
        let options = TelemetryOptions {
            format: LogFormat::Json,
            redactor: Redactor::new([], []).expect("redactor"),
            traces,
        };
        build(options, std::io::sink).expect("telemetry").0
    }

    fn exporting(mailbox_spans: bool) -> TraceConfig {
        // Nothing listens there; nothing is flushed either.
        let mut config = TraceConfig::new("http://127.0.0.1:9/v1/traces", OtlpProtocol::HttpProtobuf);
        config.mailbox_spans = mailbox_spans;
        config
    }

    #[test]
    fn batch_calls_are_recorded_only_when_spans_are_exported_and_mailbox_spans_wanted() {
        for (traces, recorded) in [
            (None, false),
            (Some(exporting(false)), false),
            (Some(exporting(true)), true),
        ] {
            let dispatch = subscriber(traces);
            tracing::dispatcher::with_default(&dispatch, || {
                assert_eq!(BatchSpans::current("jobs").is_some(), recorded);
            });
        }
    }

    /// Keeps the spans that end, as a collector would receive them.
    #[derive(Debug, Clone, Default)]
    pub(in crate::telemetry) struct Ended(
        pub(in crate::telemetry) std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>,
    );

    impl opentelemetry_sdk::trace::SpanProcessor for Ended {
        fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

        fn on_end(&self, span: opentelemetry_sdk::trace::SpanData) {
            self.0.lock().expect("spans").push(span);
        }

        fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }

        fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
    }

    /// The host's tracer on a provider whose ended spans `Ended` keeps.
    pub(in crate::telemetry) fn recording() -> (Ended, SdkTracer) {
        let ended = Ended::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_span_processor(ended.clone())
            .build();
        (ended, crate::telemetry::traces::tracer(&provider))
    }

    #[test]
    fn an_ack_that_failed_for_some_jobs_is_an_error_span_naming_how_many() {
        let (ended, tracer) = recording();
        let spans = BatchSpans::new(tracer, 128, "jobs");
        let job = SpanLink::sampled_for_tests();
        spans.start().end(BatchOperation::Ack, 3, 1, [job.clone()]);
        spans.start().end(BatchOperation::Claim, 2, 0, []);

        let ended = ended.0.lock().expect("spans");
        let [ack, claim] = ended.as_slice() else {
            panic!("two spans: {ended:#?}")
        };
        assert_eq!(ack.name, "ack jobs");
        assert_eq!(ack.span_kind, SpanKind::Client);
        assert_eq!(ack.status, Status::error("1 of 3 failed"));
        let attribute = |span: &opentelemetry_sdk::trace::SpanData, key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        for (key, value) in [
            ("messaging.operation.type", "settle"),
            ("messaging.operation.name", "ack"),
            ("messaging.destination.name", "jobs"),
            ("messaging.batch.message_count", "3"),
        ] {
            assert_eq!(attribute(ack, key).as_deref(), Some(value), "{key}");
        }
        let linked: Vec<&SpanContext> = ack.links.iter().map(|link| &link.span_context).collect();
        assert_eq!(linked, [&job.0]);
        assert_eq!(claim.name, "claim jobs");
        assert_eq!(claim.status, Status::Unset, "a claim that delivered is no error");
        assert_eq!(attribute(claim, "messaging.operation.type").as_deref(), Some("receive"));
    }

    #[test]
    fn a_joined_job_span_links_to_its_claim_and_is_linked_from_its_ack() {
        use tracing_subscriber::layer::SubscriberExt;

        let (ended, tracer) = recording();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer.clone()));
        let spans = BatchSpans::new(tracer, 128, "jobs");
        tracing::subscriber::with_default(subscriber, || {
            let claim = spans.start().end(BatchOperation::Claim, 1, 0, []);
            let job = tracing::info_span!("job");
            let link = spans.join(&job, Some(claim.clone())).expect("sampled");
            // Entered after it started, as the worker's job runs in it.
            job.in_scope(|| {});
            drop(job);
            spans.start().end(BatchOperation::Ack, 1, 0, [link.clone()]);

            let ended = ended.0.lock().expect("spans");
            let [_, job, ack] = ended.as_slice() else {
                panic!("claim, job and ack spans: {ended:#?}")
            };
            assert_eq!(job.span_context, link.0);
            let linked = |span: &opentelemetry_sdk::trace::SpanData| -> Vec<SpanContext> {
                span.links.iter().map(|link| link.span_context.clone()).collect()
            };
            assert_eq!(linked(job), [claim.0]);
            assert_eq!(linked(ack), [link.0]);
        });
    }

    #[test]
    fn a_batch_call_links_to_its_jobs_and_its_context_is_valid() {
        let dispatch = subscriber(Some(exporting(true)));
        tracing::dispatcher::with_default(&dispatch, || {
            let spans = BatchSpans::current("jobs").expect("exported");
            let job = tracing::info_span!(target: "wink_host::worker", "job");
            let link = spans.join(&job, None).expect("recorded");
            let claim = spans.start().end(BatchOperation::Claim, 1, 0, [link.clone()]);
            assert!(claim.0.is_valid());
            assert_ne!(claim.0.trace_id(), link.0.trace_id(), "a trace of its own");
        });
    }
}
