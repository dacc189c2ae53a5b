//! OTLP export over HTTP/protobuf or gRPC, with its own encoder and
//! batching.
//!
//! The SDK's batch processor hands the export thread whole `SpanData`
//! values: moving them through its queue, encoding them there and freeing
//! their strings on a thread other than the one that allocated them took
//! more CPU than the job spans themselves were worth on trivial jobs, and
//! under load its queue overflowed. Here each span is encoded where it ends
//! ([`processor`](mod@processor)), into bytes that a thread of its own sends in batches.
//! Both protocols carry the same `ExportTraceServiceRequest` bytes: HTTP
//! as the request body ([`http`]), gRPC as its one message ([`grpc`]).

mod encode;
mod grpc;
mod http;
mod processor;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Redactor;
use super::traces::{OtlpProtocol, TraceConfig};
pub(super) use processor::EncodingBatchProcessor;
use processor::Transport;

/// First wait between attempts of one export; it doubles per attempt.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Attempts per batch, as opentelemetry-otlp makes: a batch the collector
/// cannot take within them is dropped, so that the next one is not held up.
const MAX_ATTEMPTS: u32 = 4;

/// The span processor for export as `config` describes it, with its
/// headers (gRPC metadata) already validated.
pub(super) fn processor(
    config: &TraceConfig,
    headers: ::http::HeaderMap,
    redactor: Redactor,
) -> Result<EncodingBatchProcessor, String> {
    match config.protocol {
        OtlpProtocol::HttpProtobuf => {
            let client = Retrying::new(http::HttpClient::new(config, headers)?, config.timeout);
            EncodingBatchProcessor::start(client, redactor, config.batch)
        }
        OtlpProtocol::Grpc => {
            let client = Retrying::new(grpc::GrpcClient::new(config, headers)?, config.timeout);
            EncodingBatchProcessor::start(client, redactor, config.batch)
        }
    }
}

/// One attempt to deliver an encoded request, over one protocol.
trait Deliver: Send + Sync + 'static {
    async fn deliver(&self, body: &Bytes) -> Result<(), Failure>;
}

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    retry: bool,
    message: String,
}

/// Delivers encoded requests with `D`, retrying throttling and transient
/// failures within the export timeout.
#[derive(Debug)]
struct Retrying<D> {
    protocol: D,
    timeout: Duration,
    /// Drives the protocol's client on the thread that sends, the
    /// processor's own, started there on the first send. (A client on a
    /// runtime elsewhere would hand each request to a thread of its own and
    /// back.)
    runtime: OnceLock<tokio::runtime::Runtime>,
}

impl<D: Deliver> Retrying<D> {
    fn new(protocol: D, timeout: Duration) -> Self {
        Self {
            protocol,
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

    async fn send_with_retries(&self, body: Bytes) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            match self.protocol.deliver(&body).await {
                Ok(()) => return Ok(()),
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
    fn send(&self, body: Bytes) -> Result<(), String> {
        self.runtime()?.block_on(self.send_with_retries(body))
    }
}
