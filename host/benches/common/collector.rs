//! An OTLP endpoint that only counts export requests, on a thread of its
//! own, over HTTP/protobuf (`/v1/traces`) and gRPC on the same port. It
//! stands for a collector elsewhere: it reads each request and drops it as
//! it arrives, without buffering or decoding it, and its CPU time can be
//! told apart from the host's, so the benchmark charges the host only for
//! producing and sending its spans. It still shares the machine's cores
//! with the host.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use wink_host::telemetry::{OtlpProtocol, TraceConfig};

/// The endpoint, running until the process exits.
pub struct CountingCollector {
    address: std::net::SocketAddr,
    counts: Arc<Counts>,
    cpu_clock: libc::clockid_t,
    _thread: std::thread::JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl CountingCollector {
    /// Listen on a loopback port, serving from a thread named `collector`.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let address = listener.local_addr().expect("addr");
        let counts = Arc::new(Counts::default());
        let serving = counts.clone();
        let thread = std::thread::Builder::new()
            .name("collector".into())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("collector runtime")
                    .block_on(serve(listener, serving));
            })
            .expect("collector thread");
        let cpu_clock = thread_cpu_clock(&thread);
        Self {
            address,
            counts,
            cpu_clock,
            _thread: thread,
        }
    }

    /// Where to send spans over `protocol`: the full URL for HTTP (with
    /// `/v1/traces`), the base URL for gRPC.
    pub fn endpoint(&self, protocol: OtlpProtocol) -> String {
        match protocol {
            OtlpProtocol::HttpProtobuf => format!("http://{}/v1/traces", self.address),
            OtlpProtocol::Grpc => format!("http://{}", self.address),
        }
    }

    /// The export configuration that the `OTEL_*` variables describe, as
    /// `wink-host` reads them (protocol, batch sizes, timeout, resource),
    /// but sending here. Panics on a bad value, or when export is switched
    /// off, which a benchmark of export cannot honour.
    pub fn trace_config(&self) -> TraceConfig {
        let mut config = TraceConfig::from_vars(|name| match name {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some(self.endpoint(OtlpProtocol::HttpProtobuf)),
            _ => std::env::var(name).ok(),
        })
        .unwrap_or_else(|err| panic!("{err}"))
        .expect("OTEL_SDK_DISABLED and OTEL_TRACES_EXPORTER=none must be unset: the benchmark exports");
        config.endpoint = self.endpoint(config.protocol);
        config
    }

    /// Export requests received so far.
    pub fn requests(&self) -> u64 {
        self.counts.requests.load(Ordering::Relaxed)
    }

    /// Request body bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.counts.bytes.load(Ordering::Relaxed)
    }

    /// CPU time the collector's thread has used so far.
    #[allow(unsafe_code)] // std cannot read another thread's CPU clock
    pub fn cpu_time(&self) -> Duration {
        let mut time = std::mem::MaybeUninit::<libc::timespec>::uninit();
        // SAFETY: the clock belongs to a thread that runs as long as the
        // process, and clock_gettime fills the struct it is given.
        let time = unsafe {
            assert_eq!(
                libc::clock_gettime(self.cpu_clock, time.as_mut_ptr()),
                0,
                "clock_gettime"
            );
            time.assume_init()
        };
        Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
    }
}

#[allow(unsafe_code)] // std cannot name another thread's CPU clock
fn thread_cpu_clock(thread: &std::thread::JoinHandle<()>) -> libc::clockid_t {
    use std::os::unix::thread::JoinHandleExt as _;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the handle names a live thread, and the call fills `clock`.
    let status = unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock) };
    assert_eq!(status, 0, "pthread_getcpuclockid");
    clock
}

async fn serve(listener: std::net::TcpListener, counts: Arc<Counts>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    while let Ok((stream, _)) = listener.accept().await {
        let counts = counts.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let counts = counts.clone();
            async move {
                let grpc = request.version() == hyper::Version::HTTP_2;
                let mut body = request.into_body();
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame?.into_data() {
                        counts.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                }
                counts.requests.fetch_add(1, Ordering::Relaxed);
                Ok::<_, hyper::Error>(if grpc { grpc_answer() } else { http_answer() })
            }
        });
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, hyper::Error>>>;
type Answer = hyper::Response<StreamBody<Frames>>;

fn answer(content_type: &str, frames: Vec<Frame<Bytes>>) -> Answer {
    let frames: Vec<_> = frames.into_iter().map(Ok).collect();
    hyper::Response::builder()
        .header("content-type", content_type)
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .expect("response")
}

/// An empty body: the encoding of an empty `ExportTraceServiceResponse`.
fn http_answer() -> Answer {
    answer("application/x-protobuf", Vec::new())
}

/// The same empty message in gRPC's framing (uncompressed, zero bytes
/// long), and the trailers that end the call well.
fn grpc_answer() -> Answer {
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
    answer(
        "application/grpc",
        vec![Frame::data(Bytes::from_static(&[0; 5])), Frame::trailers(trailers)],
    )
}
