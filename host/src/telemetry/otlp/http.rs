//! OTLP over HTTP/protobuf: the encoded request is the body of a POST.

use bytes::Bytes;

use super::{Deliver, Failure, unreachable};
use crate::telemetry::traces::{OtlpCompression, TraceConfig};

/// Posts encoded requests to an OTLP/HTTP endpoint.
#[derive(Debug)]
pub(super) struct HttpClient {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    headers: http::HeaderMap,
    gzip: bool,
}

impl HttpClient {
    pub(super) fn new(config: &TraceConfig, mut headers: http::HeaderMap) -> Result<Self, String> {
        // How the body is encoded is the exporter's to say, whatever the
        // configured headers hold.
        headers.remove(http::header::CONTENT_ENCODING);
        let endpoint = reqwest::Url::parse(&config.endpoint).map_err(|err| format!("not a URL: {err}"))?;
        // No timeout of its own: the caller ends each attempt by the
        // export's deadline.
        let client = reqwest::Client::builder()
            .user_agent(concat!("wink-host/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| format!("cannot build the HTTP client: {err}"))?;
        Ok(Self {
            client,
            endpoint,
            headers,
            gzip: config.compression == OtlpCompression::Gzip,
        })
    }
}

impl Deliver for HttpClient {
    fn prepare(&self, body: Bytes) -> Result<Bytes, String> {
        if !self.gzip {
            return Ok(body);
        }
        gzipped(&body).map_err(|err| format!("cannot compress the request: {err}"))
    }

    async fn deliver(&self, body: &Bytes) -> Result<Bytes, Failure> {
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf");
        if self.gzip {
            request = request.header(http::header::CONTENT_ENCODING, "gzip");
        }
        // The configured headers come last, so that they replace ours.
        let response = request
            .headers(self.headers.clone())
            .body(body.clone())
            .send()
            .await
            .map_err(|err| {
                // The endpoint is in the configuration; its URL may hold credentials.
                let err = err.without_url();
                Failure {
                    retry: !err.is_builder(),
                    message: unreachable(&err),
                }
            })?;
        let status = response.status();
        let protobuf = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|value| is_protobuf(value.as_bytes()));
        // Read to the end, so that the connection can carry the next batch.
        let answer = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            // Only a protobuf answer is an `ExportTraceServiceResponse`; a
            // proxy's page is not.
            return Ok(if protobuf { answer } else { Bytes::new() });
        }
        Err(Failure {
            retry: matches!(status.as_u16(), 429 | 502 | 503 | 504),
            message: format!("the collector answered {status}"),
        })
    }
}

/// `body` compressed with gzip at its fastest level: it runs on the export
/// thread, beside the jobs, for every request, and the fastest level
/// already shrinks the repetitive OTLP encoding several times over.
fn gzipped(body: &[u8]) -> std::io::Result<Bytes> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    encoder.write_all(body)?;
    encoder.finish().map(Bytes::from)
}

/// Whether a `Content-Type` names protobuf (media types ignore case, and
/// may carry parameters).
fn is_protobuf(content_type: &[u8]) -> bool {
    let media_type = content_type.split(|&byte| byte == b';').next().unwrap_or_default();
    media_type.trim_ascii().eq_ignore_ascii_case(b"application/x-protobuf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_answers_are_told_by_their_media_type() {
        for (content_type, protobuf) in [
            (&b"application/x-protobuf"[..], true),
            (b"Application/X-Protobuf; charset=binary", true),
            (b"application/json", false),
            (b"text/html", false),
            (b"application/x-protobuffer", false),
        ] {
            assert_eq!(
                is_protobuf(content_type),
                protobuf,
                "{:?}",
                String::from_utf8_lossy(content_type)
            );
        }
    }
}
