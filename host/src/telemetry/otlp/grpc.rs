//! OTLP over gRPC: the encoded request is the one message of a unary call
//! to `TraceService/Export`, sent as it is by a codec that only frames it.

use std::sync::OnceLock;

use bytes::{Buf as _, BufMut as _, Bytes};
use http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::{Deliver, Failure, causes, unreachable, with_causes};
use crate::telemetry::traces::{OtlpCompression, TraceConfig};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Calls `TraceService/Export` with encoded requests.
#[derive(Debug)]
pub(super) struct GrpcClient {
    endpoint: Endpoint,
    /// Connected on the first call: the channel's tasks run on the runtime
    /// of the thread that sends, which exists only from then on.
    channel: OnceLock<Channel>,
    metadata: tonic::metadata::MetadataMap,
    gzip: bool,
}

impl GrpcClient {
    pub(super) fn new(config: &TraceConfig, headers: http::HeaderMap) -> Result<Self, String> {
        // Checked here too, for configurations not read from the environment.
        if crate::telemetry::traces::has_credentials(&config.endpoint) {
            return Err(crate::telemetry::traces::GRPC_CREDENTIALS_REFUSED.into());
        }
        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|err| format!("not a URI: {err}"))?
            // No timeouts of its own (connecting included): the caller ends
            // each attempt by the export's deadline.
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
            gzip: config.compression == OtlpCompression::Gzip,
        })
    }
}

impl Deliver for GrpcClient {
    async fn deliver(&self, body: &Bytes) -> Result<Bytes, Failure> {
        let channel = self.channel.get_or_init(|| self.endpoint.connect_lazy()).clone();
        let mut grpc = tonic::client::Grpc::new(channel);
        if self.gzip {
            grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        grpc.ready().await.map_err(|err| Failure {
            retry: true,
            message: unreachable(&err),
        })?;
        let mut request = tonic::Request::new(body.clone());
        // No `grpc-timeout`: tonic would enforce it too, racing the
        // caller's deadline to say the same thing in other words.
        *request.metadata_mut() = self.metadata.clone();
        grpc.unary::<_, Bytes, _>(request, PathAndQuery::from_static(EXPORT_PATH), Encoded)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| failure(&status))
    }
}

/// What a failed call means, by the OTLP specification's table of gRPC
/// codes: `RESOURCE_EXHAUSTED` is retried only when the collector says when
/// to (`RetryInfo`), which this client does not read, so it is not. A
/// status tonic made up itself (it has a cause, which one the collector
/// sent has not) is a connection's failure, retried on a new connection:
/// the connection is only watched while a call is under way, so one the
/// collector closed while the exporter was idle fails the next call.
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
    let local = std::error::Error::source(status).is_some();
    let message = if never_connected(status) {
        format!("cannot reach the collector: {}", described(status))
    } else if local {
        format!("the connection to the collector failed: {}", described(status))
    } else {
        format!("the collector answered {:?}: {}", status.code(), described(status))
    };
    Failure {
        retry: retry || local,
        message,
    }
}

/// Whether the call failed to connect rather than being answered.
fn never_connected(status: &Status) -> bool {
    causes(status).any(|err| err.is::<tonic::ConnectError>())
}

/// The status's message and its causes (none of which holds the
/// endpoint's URL).
fn described(status: &Status) -> String {
    with_causes(status.message().to_owned(), status)
}

/// Sends a request already encoded, and takes the answer's message as it
/// is.
#[derive(Debug, Clone, Copy)]
struct Encoded;

impl Codec for Encoded {
    type Encode = Bytes;
    type Decode = Bytes;
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
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(code: Code) -> Failure {
        failure(&Status::new(code, "from the collector"))
    }

    #[test]
    fn answers_are_retried_as_the_otlp_specification_says() {
        for code in [
            Code::Unavailable,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
        ] {
            assert!(answered(code).retry, "{code:?}");
        }
        for code in [
            Code::ResourceExhausted,
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::Unknown,
        ] {
            assert!(!answered(code).retry, "{code:?}");
        }
        assert_eq!(
            answered(Code::InvalidArgument).message,
            "the collector answered InvalidArgument: from the collector"
        );
    }

    #[test]
    fn a_broken_connection_is_retried_and_a_refused_one_says_why() {
        let broken = failure(&Status::from_error(Box::new(std::io::Error::other("broken pipe"))));
        assert!(broken.retry);
        assert_eq!(broken.message, "the connection to the collector failed: broken pipe");
        let refused = failure(&Status::from_error(Box::new(tonic::ConnectError(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )))));
        assert!(refused.retry);
        assert!(
            refused.message.starts_with("cannot reach the collector: ")
                && refused.message.ends_with("connection refused"),
            "{}",
            refused.message
        );
    }
}
