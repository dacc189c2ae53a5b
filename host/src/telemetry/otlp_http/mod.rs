//! OTLP over HTTP/protobuf, with its own encoder and batching.
//!
//! The SDK's batch processor hands the export thread whole `SpanData`
//! values: moving them through its queue, encoding them there and freeing
//! their strings on a thread other than the one that allocated them took
//! more CPU than the job spans themselves were worth on trivial jobs. Here
//! each span is encoded where it ends ([`processor`]), into bytes that a
//! thread of its own posts in batches ([`OtlpHttpClient`]).

mod encode;
mod processor;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Redactor;
use super::traces::TraceConfig;
pub(super) use processor::EncodingBatchProcessor;
use processor::Transport;

/// First wait between attempts of one export; it doubles per attempt.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Attempts per batch, as opentelemetry-otlp makes: a batch the collector
/// cannot take within them is dropped, so that the next one is not held up.
const MAX_ATTEMPTS: u32 = 4;

/// The span processor for HTTP export as `config` describes it (whose
/// protocol is HTTP/protobuf), with its headers already validated.
pub(super) fn processor(
    config: &TraceConfig,
    headers: http::HeaderMap,
    redactor: Redactor,
) -> Result<EncodingBatchProcessor, String> {
    let client = OtlpHttpClient::new(config, headers)?;
    EncodingBatchProcessor::start(client, redactor, config.batch)
}

/// Posts encoded requests to an OTLP/HTTP endpoint, retrying throttling
/// and transient failures within the export timeout.
#[derive(Debug)]
pub(super) struct OtlpHttpClient {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    headers: http::HeaderMap,
    timeout: Duration,
    /// Drives `client` on the thread that sends, the processor's own,
    /// started there on the first send. (reqwest's blocking client would
    /// hand each request to a runtime thread of its own and back.)
    runtime: OnceLock<tokio::runtime::Runtime>,
}

impl OtlpHttpClient {
    fn new(config: &TraceConfig, headers: http::HeaderMap) -> Result<Self, String> {
        let endpoint = reqwest::Url::parse(&config.endpoint).map_err(|err| format!("not a URL: {err}"))?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("wink-host/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| format!("cannot build the HTTP client: {err}"))?;
        Ok(Self {
            client,
            endpoint,
            headers,
            timeout: config.timeout,
            runtime: OnceLock::new(),
        })
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime, String> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| format!("cannot start the HTTP client's runtime: {err}"))?;
        Ok(self.runtime.get_or_init(|| runtime))
    }

    async fn send_with_retries(&self, body: Bytes) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            match self.post(&body).await {
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

    async fn post(&self, body: &Bytes) -> Result<(), Failure> {
        // The configured headers come last, so that they replace ours.
        let response = self
            .client
            .post(self.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .headers(self.headers.clone())
            .body(body.clone())
            .send()
            .await
            .map_err(|err| Failure {
                retry: !err.is_builder(),
                // The endpoint is in the configuration; its URL may hold credentials.
                message: format!("cannot reach the collector: {}", err.without_url()),
            })?;
        let status = response.status();
        // Read to the end, so that the connection can carry the next batch.
        let _ = response.bytes().await;
        if status.is_success() {
            return Ok(());
        }
        Err(Failure {
            retry: matches!(status.as_u16(), 429 | 502 | 503 | 504),
            message: format!("the collector answered {status}"),
        })
    }
}

impl Transport for OtlpHttpClient {
    /// Blocks the processor's own thread, never a job's: a slow collector
    /// only delays the next batch.
    fn send(&self, body: Bytes) -> Result<(), String> {
        self.runtime()?.block_on(self.send_with_retries(body))
    }
}

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    retry: bool,
    message: String,
}
