//! OTLP export over HTTP/protobuf or gRPC, with its own encoder and
//! batching.
//!
//! The SDK's batch processor hands the export thread whole `SpanData`
//! values: moving them through its queue, encoding them there and freeing
//! their strings on a thread other than the one that allocated them took
//! more CPU than the job spans themselves were worth on trivial jobs, and
//! under load its queue overflowed. Here each span is encoded where it
//! ends ([`processor`](mod@processor)), into bytes that a thread of its own
//! sends in batches. Both protocols carry the same `ExportTraceServiceRequest` bytes: HTTP
//! as the request body ([`http`]), gRPC as its one message ([`grpc`]).

mod answer;
mod encode;
mod grpc;
mod http;
mod processor;

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::traces::{OtlpProtocol, TraceConfig};
use super::{Redactor, SubscriberSlot};
pub(super) use processor::EncodingBatchProcessor;
use processor::{Transport, lock, logging_to, warning_due};

/// First wait between attempts of one export; it doubles per attempt.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Attempts per batch, as opentelemetry-otlp's exporters make: a batch the
/// collector cannot take within them is dropped, so that the next one is
/// not held up.
const MAX_ATTEMPTS: u32 = 4;

/// The span processor for export as `config` describes it, with its
/// headers (gRPC metadata) already validated, logging its warnings to
/// `subscriber`.
pub(super) fn processor(
    config: &TraceConfig,
    headers: ::http::HeaderMap,
    redactor: Redactor,
    subscriber: SubscriberSlot,
) -> Result<EncodingBatchProcessor, String> {
    match config.protocol {
        OtlpProtocol::HttpProtobuf => start(http::HttpClient::new(config, headers)?, config, redactor, subscriber),
        OtlpProtocol::Grpc => start(grpc::GrpcClient::new(config, headers)?, config, redactor, subscriber),
    }
}

fn start(
    client: impl Deliver,
    config: &TraceConfig,
    redactor: Redactor,
    subscriber: SubscriberSlot,
) -> Result<EncodingBatchProcessor, String> {
    EncodingBatchProcessor::start(
        Retrying::new(client, config.timeout, subscriber.clone()),
        redactor,
        config.batch,
        subscriber,
    )
}

/// One attempt to deliver an encoded request, over one protocol.
trait Deliver: Send + Sync + 'static {
    /// The body to send for the encoded request `body`, made once for all
    /// the attempts (say, compressed).
    fn prepare(&self, body: Bytes) -> Result<Bytes, String> {
        Ok(body)
    }

    /// The collector's answer when it took the request: an encoded
    /// `ExportTraceServiceResponse`, or nothing to read. `time_left` is
    /// what remains of the export's timeout, which the caller enforces;
    /// the protocol may tell the collector.
    async fn deliver(&self, body: &Bytes, time_left: Duration) -> Result<Bytes, Failure>;
}

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    retry: bool,
    message: String,
}

/// `message`, then the message of each cause in `err`'s chain that adds
/// to it: for a failed connection, that it was refused, a name that did
/// not resolve, a certificate that was not trusted.
fn with_causes(mut message: String, err: &(dyn std::error::Error + 'static)) -> String {
    for cause in causes(err) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}

/// The causes of `err`, nearest first.
fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(err.source(), |cause| cause.source())
}

/// Delivers encoded requests with `D`, retrying throttling and transient
/// failures within the export timeout.
#[derive(Debug)]
struct Retrying<D> {
    client: D,
    timeout: Duration,
    /// When the collector's partial success was last warned about.
    last_rejection_warning: Mutex<Option<Instant>>,
    /// Where that warning goes.
    subscriber: SubscriberSlot,
    /// Drives the client on the thread that sends, the
    /// processor's own, started there on the first send. (A client on a
    /// runtime elsewhere would hand each request to a thread of its own and
    /// back.)
    runtime: OnceLock<tokio::runtime::Runtime>,
}

impl<D: Deliver> Retrying<D> {
    fn new(client: D, timeout: Duration, subscriber: SubscriberSlot) -> Self {
        Self {
            client,
            timeout,
            last_rejection_warning: Mutex::new(None),
            subscriber,
            runtime: OnceLock::new(),
        }
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime, String> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| format!("cannot start the exporter's runtime: {err}"))?;
        Ok(self.runtime.get_or_init(|| runtime))
    }

    async fn send_with_retries(&self, body: Bytes) -> Result<(), String> {
        let body = self.client.prepare(body)?;
        let deadline = Instant::now() + self.timeout;
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            // Each attempt, connecting included, ends by the deadline.
            let time_left = deadline.saturating_duration_since(Instant::now());
            let delivered = tokio::time::timeout(time_left, self.client.deliver(&body, time_left))
                .await
                .unwrap_or_else(|_| {
                    Err(Failure {
                        retry: false,
                        message: format!("no answer within the export timeout of {:?}", self.timeout),
                    })
                });
            match delivered {
                Ok(answer) => {
                    self.warn_of_rejections(&answer);
                    return Ok(());
                }
                Err(failure) if failure.retry && attempt < MAX_ATTEMPTS && Instant::now() + delay < deadline => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(failure) => return Err(format!("{} (attempt {attempt} of {MAX_ATTEMPTS})", failure.message)),
            }
        }
    }
}

impl<D> Retrying<D> {
    /// Warn, at most once per warning interval, of a partial success: spans
    /// the collector took the request of but rejected, or a warning of its
    /// own (not retried, as the OTLP specification says, only reported).
    fn warn_of_rejections(&self, answer: &[u8]) {
        /// Enough of the collector's message to say what went wrong.
        const MAX_REASON_CHARS: usize = 512;
        let Some(partial) = answer::partial_success(answer) else {
            return;
        };
        if !warning_due(&mut lock(&self.last_rejection_warning)) {
            return;
        }
        let reason: String = partial.error_message.chars().take(MAX_REASON_CHARS).collect();
        logging_to(&self.subscriber, || {
            if partial.rejected_spans == 0 {
                tracing::warn!(reason, "the collector took the spans with a warning");
            } else {
                tracing::warn!(
                    rejected_spans = partial.rejected_spans,
                    reason,
                    "the collector rejected spans it was sent"
                );
            }
        });
    }
}

impl<D: Deliver> Transport for Retrying<D> {
    /// Blocks the processor's own thread, never a job's: a slow collector
    /// only delays the next batch.
    fn send(&self, body: Bytes) -> Result<(), String> {
        self.runtime()?.block_on(self.send_with_retries(body))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
    use prost::Message as _;

    use super::*;
    use crate::telemetry::TestSink;

    /// Takes every request, answering each with the same bytes.
    struct Answering(Bytes);

    impl Deliver for Answering {
        async fn deliver(&self, _body: &Bytes, _time_left: Duration) -> Result<Bytes, Failure> {
            Ok(self.0.clone())
        }
    }

    /// The log lines of `sends` requests through a transport whose
    /// collector answers `answer`.
    fn warnings_of(answer: &ExportTraceServiceResponse, sends: usize) -> String {
        let sink = TestSink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let transport = Retrying::new(
            Answering(answer.encode_to_vec().into()),
            Duration::from_secs(5),
            SubscriberSlot::default(),
        );
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..sends {
                transport.send(Bytes::new()).expect("delivered");
            }
        });
        sink.text()
    }

    #[test]
    fn spans_the_collector_rejects_are_warned_about_once_per_interval() {
        let rejecting = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "span too large".into(),
            }),
        };
        let logs = warnings_of(&rejecting, 2);
        assert_eq!(logs.lines().count(), 1, "{logs}");
        assert!(
            logs.contains("the collector rejected spans it was sent")
                && logs.contains("rejected_spans=3")
                && logs.contains("reason=\"span too large\""),
            "{logs}"
        );
        let warning = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 0,
                error_message: "x".repeat(600),
            }),
        };
        let logs = warnings_of(&warning, 1);
        assert!(
            logs.contains("the collector took the spans with a warning")
                && logs.contains(&format!("reason=\"{}\"", "x".repeat(512))),
            "{logs}"
        );
        assert!(!logs.contains(&"x".repeat(513)), "{logs}");
        assert_eq!(warnings_of(&ExportTraceServiceResponse::default(), 2), "");
    }
}
