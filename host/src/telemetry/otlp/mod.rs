//! OTLP export over HTTP/protobuf or gRPC, with its own encoder and
//! batching.
//!
//! The SDK's batch processor hands the export thread whole `SpanData`
//! values through one queue: with opentelemetry-otlp's encoder on top,
//! that took more CPU than the job spans themselves were worth on trivial
//! jobs, and under load its queue overflowed. Here each span is encoded
//! where it ends, or, where the runtime leaves cores free, by the export
//! thread from a batch per thread ([`processor`](mod@processor)), into
//! bytes that a thread of its own sends in batches. Both protocols carry the same
//! `ExportTraceServiceRequest` bytes: HTTP as the request body ([`http`]),
//! gRPC as its one message ([`grpc`]).

mod answer;
mod encode;
mod grpc;
mod http;
mod processor;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::traces::{OtlpProtocol, TraceConfig};
use super::{Redactor, SubscriberSlot};
use answer::PartialSuccess;
pub(super) use processor::EncodingBatchProcessor;
use processor::{Placement, Transport};

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
        Retrying::new(client, config.timeout),
        redactor,
        config.batch,
        Placement::Auto,
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
    /// `ExportTraceServiceResponse`, or nothing to read. No timeout of its
    /// own: the caller ends each attempt by the export's deadline.
    async fn deliver(&self, body: &Bytes) -> Result<Bytes, Failure>;
}

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    retry: bool,
    message: String,
}

/// That a request never reached the collector, and why: `err` and its causes.
fn unreachable(err: &(dyn std::error::Error + 'static)) -> String {
    format!("cannot reach the collector: {}", with_causes(err.to_string(), err))
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
    /// Drives the client on the thread that sends, the
    /// processor's own, started there on the first send. (A client on a
    /// runtime elsewhere would hand each request to a thread of its own and
    /// back.)
    runtime: OnceLock<tokio::runtime::Runtime>,
}

impl<D: Deliver> Retrying<D> {
    fn new(client: D, timeout: Duration) -> Self {
        Self {
            client,
            timeout,
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

    async fn send_with_retries(&self, body: Bytes) -> Result<Option<PartialSuccess>, String> {
        let body = self.client.prepare(body)?;
        let deadline = Instant::now() + self.timeout;
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            // Each attempt, connecting included, ends by the deadline.
            let time_left = deadline.saturating_duration_since(Instant::now());
            let delivered = tokio::time::timeout(time_left, self.client.deliver(&body))
                .await
                .unwrap_or_else(|_| {
                    Err(Failure {
                        retry: false,
                        message: format!("no answer within the export timeout of {:?}", self.timeout),
                    })
                });
            match delivered {
                Ok(answer) => return Ok(answer::partial_success(&answer)),
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

impl<D: Deliver> Transport for Retrying<D> {
    /// Blocks the processor's own thread, never a job's: a slow collector
    /// only delays the next batch.
    fn send(&self, body: Bytes) -> Result<Option<PartialSuccess>, String> {
        self.runtime()?.block_on(self.send_with_retries(body))
    }
}
