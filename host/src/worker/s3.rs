//! Agent components stored in S3 (`s3://BUCKET/KEY` in the envelope).
//!
//! The client is built on the first `s3://` job, from `aws-config`'s default
//! chain (or the worker's own SDK configuration), so a worker that never sees
//! one never looks for credentials. What fails for good (no such key or
//! bucket, access denied, too large) is the message's fault and goes to the
//! dead-letter queue; what may pass (timeouts, 5xx, no route) is retried.

use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use tokio::sync::OnceCell;

use crate::runtime::MAX_COMPONENT_BYTES;

/// How long connecting to S3 may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request, retries included, may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Where agent objects are fetched from.
#[derive(Debug, Clone, Default)]
pub(crate) struct S3Settings {
    /// An S3-compatible endpoint instead of AWS's (path-style addressing).
    pub(crate) endpoint: Option<String>,
    /// The bucket's region instead of the default chain's.
    pub(crate) region: Option<String>,
    /// The SDK configuration to start from instead of `aws-config`'s
    /// default chain.
    pub(crate) base: Option<SdkConfig>,
}

/// Why an agent object could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FetchError {
    /// It is not there or not ours to read: another attempt fails the same way.
    Refused(String),
    /// S3 did not answer or answered with a server error: worth a retry.
    Unavailable(String),
}

/// A fetched agent object.
pub(crate) struct AgentObject {
    pub(crate) bytes: Arc<[u8]>,
    /// Identifies this version of the object; none if S3 sent no ETag.
    pub(crate) etag: Option<String>,
}

/// Fetches agent objects with one lazily built client.
pub(crate) struct S3Agents {
    settings: S3Settings,
    client: OnceCell<Client>,
}

impl S3Agents {
    pub(crate) fn new(settings: S3Settings) -> Self {
        Self {
            settings,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &Client {
        self.client.get_or_init(|| build_client(&self.settings)).await
    }

    /// The object's bytes and ETag.
    pub(crate) async fn fetch(&self, bucket: &str, key: &str) -> Result<AgentObject, FetchError> {
        let output = self
            .client()
            .await
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|err| classify(bucket, key, err))?;
        let length = output.content_length().and_then(|len| u64::try_from(len).ok());
        if let Some(length) = length.filter(|len| *len > MAX_COMPONENT_BYTES) {
            return Err(FetchError::Refused(too_large(bucket, key, length)));
        }
        let etag = output.e_tag().map(str::to_owned);
        // Read chunk by chunk so that a body longer than its header said is
        // refused at the limit, not after it was all held in memory.
        let capacity = length.and_then(|len| usize::try_from(len).ok()).unwrap_or(0);
        let mut bytes = Vec::with_capacity(capacity);
        let mut body = output.body;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|err| FetchError::Unavailable(format!("agent s3://{bucket}/{key}: reading the object: {err}")))?
        {
            let read = (bytes.len() + chunk.len()) as u64;
            if read > MAX_COMPONENT_BYTES {
                return Err(FetchError::Refused(too_large(bucket, key, read)));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(AgentObject {
            bytes: Arc::from(bytes),
            etag,
        })
    }

    /// The object's current ETag, without its bytes.
    pub(crate) async fn etag(&self, bucket: &str, key: &str) -> Result<Option<String>, FetchError> {
        let output = self
            .client()
            .await
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|err| classify(bucket, key, err))?;
        Ok(output.e_tag().map(str::to_owned))
    }
}

async fn build_client(settings: &S3Settings) -> Client {
    let base = match &settings.base {
        Some(base) => base.clone(),
        None => aws_config::defaults(BehaviorVersion::latest()).load().await,
    };
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build();
    let mut config = aws_sdk_s3::config::Builder::from(&base).timeout_config(timeouts);
    if let Some(region) = &settings.region {
        config = config.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &settings.endpoint {
        // S3-compatible servers (MinIO, moto, Ceph) rarely serve
        // virtual-hosted buckets on a bare host:port.
        config = config.endpoint_url(endpoint).force_path_style(true);
    }
    Client::from_conf(config.build())
}

fn too_large(bucket: &str, key: &str, length: u64) -> String {
    format!("agent s3://{bucket}/{key} is at least {length} bytes, over the limit of {MAX_COMPONENT_BYTES}")
}

/// Sort an S3 error into refused (missing, denied) or worth a retry.
fn classify<E>(bucket: &str, key: &str, err: SdkError<E, HttpResponse>) -> FetchError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let what = format!("agent s3://{bucket}/{key}");
    let SdkError::ServiceError(context) = &err else {
        let detail = aws_sdk_s3::error::DisplayErrorContext(&err);
        return FetchError::Unavailable(format!("{what}: S3 is unreachable: {detail}"));
    };
    let status = context.raw().status().as_u16();
    // A HEAD answer has no body, so its error has a status but no code.
    let detail = match (context.err().code(), context.err().message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        (None, _) => format!("HTTP {status}"),
    };
    // Missing, denied, or a bucket name S3 rejects: the same on every
    // attempt. Everything else (throttling, 5xx, expired credentials, a
    // region redirect) may pass or be fixed on the worker's side.
    let refused = matches!(status, 403 | 404) || context.err().code() == Some("InvalidBucketName");
    if refused {
        FetchError::Refused(format!("{what}: {detail}"))
    } else {
        FetchError::Unavailable(format!("{what}: {detail}"))
    }
}
