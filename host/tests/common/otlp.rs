//! An in-process OTLP trace receiver that decodes the protobuf payloads,
//! over HTTP/protobuf (hyper) and gRPC (tonic).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::net::TcpListener;

/// What a receiver has been sent.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<ReceivedInner>>);

#[derive(Default)]
pub struct ReceivedInner {
    /// Each span with its resource's attributes.
    spans: Vec<(Vec<KeyValue>, Span)>,
    /// The `x-api-key` header of each export request.
    api_keys: Vec<Option<String>>,
    /// The path of each HTTP export request.
    paths: Vec<String>,
    /// How each export request was compressed (`Content-Encoding`,
    /// `grpc-encoding`), if it was.
    encodings: Vec<Option<String>>,
    /// Export requests, over either protocol.
    exports: usize,
}

impl Received {
    pub fn add(
        &self,
        path: &str,
        api_key: Option<String>,
        encoding: Option<String>,
        request: ExportTraceServiceRequest,
    ) {
        let mut inner = self.0.lock().expect("received");
        inner.exports += 1;
        inner.paths.push(path.to_owned());
        inner.encodings.push(encoding);
        inner.api_keys.push(api_key);
        for resource_spans in request.resource_spans {
            let resource = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    inner.spans.push((resource.clone(), span));
                }
            }
        }
    }

    /// The spans of `trace_id`, once at least `count` of them arrived.
    pub async fn trace(&self, trace_id: &[u8], count: usize) -> Vec<(Vec<KeyValue>, Span)> {
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let spans: Vec<_> = {
                let inner = self.0.lock().expect("received");
                inner
                    .spans
                    .iter()
                    .filter(|(_, span)| span.trace_id == trace_id)
                    .cloned()
                    .collect()
            };
            if spans.len() >= count {
                return spans;
            }
            assert!(
                Instant::now() < give_up,
                "only {} of {count} spans arrived: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn api_keys(&self) -> Vec<Option<String>> {
        self.0.lock().expect("received").api_keys.clone()
    }

    pub fn paths(&self) -> Vec<String> {
        self.0.lock().expect("received").paths.clone()
    }

    /// How each export request was compressed, if it was.
    pub fn encodings(&self) -> Vec<Option<String>> {
        self.0.lock().expect("received").encodings.clone()
    }

    /// Every span received so far, without its resource.
    pub fn spans(&self) -> Vec<Span> {
        let inner = self.0.lock().expect("received");
        inner.spans.iter().map(|(_, span)| span.clone()).collect()
    }

    /// How many export requests arrived.
    pub fn exports(&self) -> usize {
        self.0.lock().expect("received").exports
    }
}

/// An OTLP/HTTP receiver on hyper: `POST` protobuf `ExportTraceServiceRequest`s.
pub async fn http_receiver() -> (String, Received) {
    serve_http(Vec::new(), None).await
}

/// As [`http_receiver`], answering its first requests with `statuses`, in
/// order, and keeping none of their spans (each still counts as an export).
pub async fn http_receiver_answering_first(statuses: Vec<u16>) -> (String, Received) {
    serve_http(statuses, None).await
}

/// As [`http_receiver`], answering each export it takes with `answer` as
/// `content_type` rather than an empty `ExportTraceServiceResponse`.
pub async fn http_receiver_answering(content_type: &'static str, answer: Bytes) -> (String, Received) {
    serve_http(Vec::new(), Some((content_type, answer))).await
}

async fn serve_http(statuses: Vec<u16>, answer: Option<(&'static str, Bytes)>) -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
    let received = Received::default();
    let sink = received.clone();
    let statuses = Arc::new(Mutex::new(std::collections::VecDeque::from(statuses)));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sink = sink.clone();
            let statuses = statuses.clone();
            let answer = answer.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let sink = sink.clone();
                let status = statuses.lock().expect("statuses").pop_front();
                let (content_type, reply) = answer.clone().unwrap_or_else(|| {
                    let empty = ExportTraceServiceResponse::default().encode_to_vec();
                    ("application/x-protobuf", Bytes::from(empty))
                });
                async move {
                    let api_key = header(request.headers(), "x-api-key");
                    let encoding = header(request.headers(), "content-encoding");
                    let path = request.uri().path().to_owned();
                    let body = request.into_body().collect().await?.to_bytes();
                    if let Some(status) = status {
                        sink.0.lock().expect("received").exports += 1;
                        return Ok(hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .expect("response"));
                    }
                    let body = match encoding.as_deref() {
                        Some("gzip") => {
                            let mut plain = Vec::new();
                            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
                                .expect("gzip");
                            Bytes::from(plain)
                        }
                        None => body,
                        Some(other) => panic!("Content-Encoding {other}"),
                    };
                    let export = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    sink.add(&path, api_key, encoding, export);
                    Ok::<_, hyper::Error>(
                        hyper::Response::builder()
                            .header("content-type", content_type)
                            .body(Full::new(reply))
                            .expect("response"),
                    )
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (endpoint, received)
}

fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// An OTLP/gRPC receiver on tonic.
pub async fn grpc_receiver() -> (String, Received) {
    spawn_grpc(GrpcAnswers::default()).await
}

/// A gRPC receiver that fails its first calls with `codes`, one per call
/// (each counted as an export), then takes what it is sent.
pub async fn grpc_receiver_answering_first(codes: Vec<tonic::Code>) -> (String, Received) {
    spawn_grpc(GrpcAnswers {
        refusing_first: codes,
        ..GrpcAnswers::default()
    })
    .await
}

/// A gRPC receiver answering each export it takes with `answer`.
pub async fn grpc_receiver_answering(answer: ExportTraceServiceResponse) -> (String, Received) {
    spawn_grpc(GrpcAnswers {
        answer,
        ..GrpcAnswers::default()
    })
    .await
}

/// How a gRPC receiver answers: it fails its first calls with
/// `refusing_first`, one code per call (each counted as an export), then
/// takes what it is sent and answers `answer`.
#[derive(Default)]
pub struct GrpcAnswers {
    pub refusing_first: Vec<tonic::Code>,
    pub answer: ExportTraceServiceResponse,
}

async fn spawn_grpc(answers: GrpcAnswers) -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let received = Received::default();
    tokio::spawn(serve_grpc(listener, received.clone(), answers, None));
    (endpoint, received)
}

/// Serve a gRPC receiver on `listener`, answering as `answers` say; with a
/// `connection_age`, it closes each connection once that long (and as long
/// again for a graceful close) has passed.
pub async fn serve_grpc(
    listener: TcpListener,
    received: Received,
    answers: GrpcAnswers,
    connection_age: Option<Duration>,
) -> Result<(), tonic::transport::Error> {
    let service = TraceServiceServer::new(GrpcCollector {
        received,
        codes: Mutex::new(answers.refusing_first.into()),
        answer: answers.answer,
    })
    .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let mut server = tonic::transport::Server::builder();
    if let Some(age) = connection_age {
        server = server.max_connection_age(age).max_connection_age_grace(age);
    }
    server
        .serve_with_incoming(service, tonic::transport::server::TcpIncoming::from(listener))
        .await
}

struct GrpcCollector {
    received: Received,
    codes: Mutex<std::collections::VecDeque<tonic::Code>>,
    answer: ExportTraceServiceResponse,
}

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Some(code) = self.codes.lock().expect("codes").pop_front() {
            self.received.0.lock().expect("received").exports += 1;
            return Err(tonic::Status::new(code, "refused by the test"));
        }
        let text = |name| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (api_key, encoding) = (text("x-api-key"), text("grpc-encoding"));
        self.received.add("grpc", api_key, encoding, request.into_inner());
        Ok(tonic::Response::new(self.answer.clone()))
    }
}
