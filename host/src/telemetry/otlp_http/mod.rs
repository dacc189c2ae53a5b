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
    client: reqwest::blocking::Client,
    endpoint: reqwest::Url,
    headers: http::HeaderMap,
    timeout: Duration,
}

impl OtlpHttpClient {
    fn new(config: &TraceConfig, headers: http::HeaderMap) -> Result<Self, String> {
        let endpoint = reqwest::Url::parse(&config.endpoint).map_err(|err| format!("not a URL: {err}"))?;
        Ok(Self {
            client: blocking_client(config.timeout)?,
            endpoint,
            headers,
            timeout: config.timeout,
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

impl Transport for OtlpHttpClient {
    /// Blocks the processor's own thread, never a job's: a slow collector
    /// only delays the next batch.
    fn send(&self, body: Bytes) -> Result<(), String> {
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
                Err(failure) => return Err(format!("{} (attempt {attempt} of {MAX_ATTEMPTS})", failure.message)),
            }
        }
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
