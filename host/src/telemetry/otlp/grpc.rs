//! OTLP over gRPC: the encoded request is the one message of a unary call
//! to `TraceService/Export`, sent as it is by a codec that only frames it.

use std::sync::OnceLock;

use bytes::{Buf as _, BufMut as _, Bytes};
use http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::{Deliver, Failure};
use crate::telemetry::traces::TraceConfig;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Calls `TraceService/Export` with encoded requests.
#[derive(Debug)]
pub(super) struct GrpcClient {
    endpoint: Endpoint,
    /// Connected on the first call: the channel's tasks run on the runtime
    /// of the thread that sends, which exists only from then on.
    channel: OnceLock<Channel>,
    metadata: tonic::metadata::MetadataMap,
}

impl GrpcClient {
    pub(super) fn new(config: &TraceConfig, headers: http::HeaderMap) -> Result<Self, String> {
        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|err| format!("not a URI: {err}"))?
            .timeout(config.timeout)
            .user_agent(concat!("wink-host/", env!("CARGO_PKG_VERSION")))
            .map_err(|err| format!("cannot set the user agent: {err}"))?;
        if endpoint.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|err| format!("cannot set up TLS: {err}"))?;
        }
        Ok(Self {
            endpoint,
            channel: OnceLock::new(),
            metadata: tonic::metadata::MetadataMap::from_headers(headers),
        })
    }
}

impl Deliver for GrpcClient {
    async fn deliver(&self, body: &Bytes) -> Result<(), Failure> {
        let channel = self.channel.get_or_init(|| self.endpoint.connect_lazy()).clone();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|err| Failure {
            retry: true,
            message: format!("cannot reach the collector: {err}"),
        })?;
        let mut request = tonic::Request::new(body.clone());
        *request.metadata_mut() = self.metadata.clone();
        grpc.unary::<_, (), _>(request, PathAndQuery::from_static(EXPORT_PATH), Encoded)
            .await
            .map(drop)
            .map_err(|status| failure(&status))
    }
}

/// What a failed call means, by the OTLP specification's table of gRPC
/// codes: `RESOURCE_EXHAUSTED` is retried only when the collector says when
/// to (`RetryInfo`), which this client does not read, so it is not.
fn failure(status: &Status) -> Failure {
    let retry = matches!(
        status.code(),
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    );
    let message = if never_connected(status) {
        format!("cannot reach the collector: {}", status.message())
    } else {
        format!("the collector answered {:?}: {}", status.code(), status.message())
    };
    Failure { retry, message }
}

/// Whether the call failed to connect rather than being answered.
fn never_connected(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Sends a request already encoded, and reads no answer: an
/// `ExportTraceServiceResponse` only reports a partial success, which the
/// HTTP client does not read either.
#[derive(Debug, Clone, Copy)]
struct Encoded;

impl Codec for Encoded {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = Encoded;
    type Decoder = Encoded;

    fn encoder(&mut self) -> Self::Encoder {
        Encoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        Encoded
    }
}

impl Encoder for Encoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Encoded {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}
