//! Amazon Bedrock through the Converse and ConverseStream APIs.
//!
//! Credentials come from `aws-config`'s default chain (environment, shared
//! profile, web identity / IRSA, ECS and IMDS) and stay in this process:
//! nothing from them reaches a guest, and error messages carry only
//! Bedrock's error code and message.

mod convert;
#[cfg(feature = "fake-bedrock")]
pub mod fake;
mod resilience;
mod stream;

use std::time::Instant;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::http::HttpResponse;
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::types as sdk;
use aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::retry::RetryConfig;

use super::{CallContext, ConverseRequest, ConverseResponse, ModelError, ModelProvider};
use convert::SdkRequest;
use resilience::{Breaker, Breakers};
pub use resilience::{BreakerConfig, RetryPolicy};

/// A Bedrock guardrail applied to every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guardrail {
    /// Guardrail id or ARN.
    pub identifier: String,
    /// Guardrail version (`DRAFT` or a number).
    pub version: String,
    /// Ask Bedrock for the guardrail trace.
    pub trace: bool,
}

/// How a [`BedrockProvider`] reaches Bedrock and calls it.
#[derive(Debug, Clone, Default)]
pub struct BedrockOptions {
    /// Model or inference-profile id (e.g. `us.anthropic.claude-sonnet-4-20250514-v1:0`)
    /// for requests that name none.
    pub default_model: Option<String>,
    /// AWS region; none: the default chain's (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// Endpoint override (VPC endpoints, tests).
    pub endpoint_url: Option<String>,
    /// Use ConverseStream and assemble the response (deltas are logged as they arrive).
    pub stream: bool,
    /// Guardrail for every call.
    pub guardrail: Option<Guardrail>,
    /// Retries of throttling, 5xx and network failures.
    pub retry: RetryPolicy,
    /// Per-model circuit breaker.
    pub breaker: BreakerConfig,
}

/// Serves model calls from Amazon Bedrock.
#[derive(Debug)]
pub struct BedrockProvider {
    client: Client,
    options: BedrockOptions,
    breakers: Breakers,
}

/// Move the request into a Converse or ConverseStream builder: they have the
/// same setters but no common trait.
macro_rules! with_request {
    ($builder:expr, $model:expr, $request:expr, $guardrail:expr) => {
        $builder
            .model_id($model)
            .set_messages(Some($request.messages))
            .set_system(Some($request.system))
            .set_tool_config($request.tool_config)
            .inference_config($request.inference)
            .set_additional_model_request_fields($request.additional_fields)
            .set_guardrail_config($guardrail)
    };
}

/// Whether a failed attempt is worth retrying.
#[derive(Debug)]
enum Failure {
    /// Throttling, 5xx, network, stream break: retry, and count against the breaker.
    Transient(ModelError),
    /// The request is wrong or forbidden: retrying cannot help.
    Permanent(ModelError),
}

impl BedrockProvider {
    /// Load credentials and region through `aws-config`'s default chain.
    pub async fn from_environment(options: BedrockOptions) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &options.region {
            loader = loader.region(Region::new(region.clone()));
        }
        Self::from_sdk_config(&loader.load().await, options)
    }

    /// Use an already loaded SDK configuration (tests give static credentials).
    pub fn from_sdk_config(sdk_config: &SdkConfig, options: BedrockOptions) -> Self {
        let mut config =
            aws_sdk_bedrockruntime::config::Builder::from(sdk_config).retry_config(RetryConfig::disabled());
        if let Some(url) = &options.endpoint_url {
            config = config.endpoint_url(url);
        }
        if let Some(region) = &options.region {
            config = config.region(Region::new(region.clone()));
        }
        Self {
            client: Client::from_conf(config.build()),
            breakers: Breakers::new(options.breaker),
            options,
        }
    }

    /// The SDK client calls go through (its configuration and connection
    /// pool), for Bedrock APIs the provider does not wrap.
    pub fn sdk_client(&self) -> &Client {
        &self.client
    }

    fn model_id<'r>(&'r self, request: &'r ConverseRequest) -> Result<&'r str, ModelError> {
        request
            .model
            .as_deref()
            .or(self.options.default_model.as_deref())
            .ok_or_else(|| ModelError::InvalidRequest("the request names no model and the job has no default".into()))
    }

    async fn attempt(&self, model: &str, request: SdkRequest) -> Result<ConverseResponse, Failure> {
        if self.options.stream {
            self.converse_stream(model, request).await
        } else {
            self.converse(model, request).await
        }
    }

    async fn converse(&self, model: &str, request: SdkRequest) -> Result<ConverseResponse, Failure> {
        let guardrail = self.options.guardrail.as_ref().map(|g| {
            sdk::GuardrailConfiguration::builder()
                .guardrail_identifier(&g.identifier)
                .guardrail_version(&g.version)
                .trace(trace(g))
                .build()
        });
        // The SDK's send future is about 7 KB. Boxed here, every future
        // above it stays small; unboxed, each await level (attempt,
        // retry loop, the trait's box) moved a copy of it on every call,
        // which cost more than everything else the host does per call.
        let output = Box::pin(with_request!(self.client.converse(), model, request, guardrail).send())
            .await
            .map_err(|err| classify(&err, None, http_status(&err)))?;
        Ok(ConverseResponse {
            stop_reason: convert::stop_reason(&output.stop_reason),
            usage: convert::usage(output.usage.as_ref()),
            message: convert::response_message(output.output),
        })
    }

    async fn converse_stream(&self, model: &str, request: SdkRequest) -> Result<ConverseResponse, Failure> {
        let guardrail = self.options.guardrail.as_ref().map(|g| {
            sdk::GuardrailStreamConfiguration::builder()
                .guardrail_identifier(&g.identifier)
                .guardrail_version(&g.version)
                .trace(trace(g))
                .build()
        });
        // Boxed for the reason given in `converse`.
        let mut output = Box::pin(with_request!(self.client.converse_stream(), model, request, guardrail).send())
            .await
            .map_err(|err| classify(&err, None, http_status(&err)))?;
        let mut assembler = stream::Assembler::new();
        let stream_error = |err: SdkError<ConverseStreamOutputError, _>| {
            let code = err.as_service_error().map(stream_error_code);
            // A frame of the stream: no HTTP status of its own.
            classify(&err, code, None)
        };
        while let Some(event) = output.stream.recv().await.map_err(stream_error)? {
            assembler.push(event);
        }
        assembler.finish().map_err(Failure::Transient)
    }

    /// One attempt, with its verdict reported to the breaker.
    ///
    /// No timer of its own: the job's deadline timer already cuts the whole
    /// job, this call included, at the same instant (a second one per
    /// attempt cost about 0.4 µs a call). A call cut that way is dropped
    /// here, and its [`Admission`](resilience::Admission) counts it as a
    /// failure of the model.
    async fn guarded_attempt(
        &self,
        breaker: &Breaker,
        model: &str,
        request: SdkRequest,
        context: &CallContext,
    ) -> Result<ConverseResponse, Failure> {
        let metrics = context.metrics.as_deref();
        if Instant::now() >= context.deadline {
            return Err(Failure::Permanent(ModelError::DeadlineExceeded));
        }
        let admission = breaker.admit(metrics, context.deadline).map_err(Failure::Permanent)?;
        match self.attempt(model, request).await {
            Ok(response) => {
                admission.success();
                Ok(response)
            }
            // Throttling is the account's quota speaking, not an outage: it is
            // retried with backoff but does not open the circuit for every job.
            Err(Failure::Transient(err @ ModelError::Throttled(_))) => {
                if let Some(metrics) = metrics {
                    metrics.model_throttled(model);
                }
                admission.neutral();
                Err(Failure::Transient(err))
            }
            Err(Failure::Transient(err)) => {
                admission.failure();
                Err(Failure::Transient(err))
            }
            Err(Failure::Permanent(err)) => {
                admission.neutral();
                Err(Failure::Permanent(err))
            }
        }
    }
}

fn trace(guardrail: &Guardrail) -> sdk::GuardrailTrace {
    if guardrail.trace {
        sdk::GuardrailTrace::Enabled
    } else {
        sdk::GuardrailTrace::Disabled
    }
}

#[async_trait]
impl ModelProvider for BedrockProvider {
    fn default_model(&self) -> Option<&str> {
        self.options.default_model.as_deref()
    }

    fn provider_name(&self) -> &'static str {
        "aws.bedrock"
    }

    async fn converse(&self, request: &ConverseRequest, context: &CallContext) -> Result<ConverseResponse, ModelError> {
        if request.messages.is_empty() {
            return Err(ModelError::InvalidRequest("the conversation has no messages".into()));
        }
        let model = self.model_id(request)?;
        // Converted before the first attempt so a malformed request fails
        // without touching the breaker; each attempt consumes its copy.
        let mut sdk_request = convert::request(request)?;
        let breaker = self.breakers.get(model);
        let mut retry = 0;
        loop {
            let err = match self.guarded_attempt(&breaker, model, sdk_request, context).await {
                Ok(response) => return Ok(response),
                Err(Failure::Permanent(err)) => return Err(err),
                Err(Failure::Transient(err)) => err,
            };
            retry += 1;
            let Some(delay) = self.options.retry.backoff(retry, context.deadline) else {
                return Err(gave_up(err, retry));
            };
            tracing::warn!(model, retry, delay_ms = delay.as_millis() as u64, error = %err, "model call failed; retrying");
            tokio::time::sleep(delay).await;
            // Converting again costs what cloning would have, and only retries pay it.
            sdk_request = convert::request(request)?;
        }
    }
}

/// The last transient error, saying how many attempts were made.
fn gave_up(err: ModelError, attempts: u32) -> ModelError {
    let suffix = format!(" (gave up after {attempts} attempts)");
    match err {
        ModelError::Throttled(m) => ModelError::Throttled(m + &suffix),
        ModelError::Provider(m) => ModelError::Provider(m + &suffix),
        other => other,
    }
}

/// The code of an exception frame: the SDK types it but leaves its metadata
/// without a code.
fn stream_error_code(err: &ConverseStreamOutputError) -> &'static str {
    match err {
        ConverseStreamOutputError::ThrottlingException(_) => "ThrottlingException",
        ConverseStreamOutputError::ValidationException(_) => "ValidationException",
        ConverseStreamOutputError::ServiceUnavailableException(_) => "ServiceUnavailableException",
        ConverseStreamOutputError::InternalServerException(_) => "InternalServerException",
        _ => "ModelStreamErrorException",
    }
}

/// The HTTP status an SDK error was answered with, if it got an answer.
fn http_status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|response| response.status().as_u16())
}

/// Sort an SDK error into retry-worthy or not, keeping only Bedrock's error
/// code and message (never request details or credentials). `typed_code`
/// stands in for errors whose metadata carries no code; without either,
/// `status` (the answer's HTTP status) decides.
fn classify<E, R>(err: &SdkError<E, R>, typed_code: Option<&'static str>, status: Option<u16>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let Some(service) = err.as_service_error() else {
        return match err {
            SdkError::ConstructionFailure(_) => Failure::Permanent(ModelError::InvalidRequest(format!(
                "cannot build the Bedrock request: {}",
                DisplayErrorContext(err)
            ))),
            _ => Failure::Transient(ModelError::Provider(format!(
                "cannot reach Bedrock: {}",
                DisplayErrorContext(err)
            ))),
        };
    };
    let Some(code) = service.code().or(typed_code) else {
        return unlabelled(status, service.message());
    };
    let message = format!("{code}: {}", service.message().unwrap_or("no message"));
    match code {
        "ThrottlingException" => Failure::Transient(ModelError::Throttled(message)),
        "ServiceUnavailableException"
        | "InternalServerException"
        | "ModelNotReadyException"
        | "ModelTimeoutException"
        | "ModelStreamErrorException" => Failure::Transient(ModelError::Provider(message)),
        "ValidationException" => Failure::Permanent(ModelError::InvalidRequest(message)),
        _ => Failure::Permanent(ModelError::Provider(message)),
    }
}

/// An error answer without Bedrock's error type, as a proxy, VPC endpoint
/// or load balancer in front of it gives: sorted by its HTTP status, as
/// the SDK's own retry policy does, so that a gateway's 502 is retried.
fn unlabelled(status: Option<u16>, message: Option<&str>) -> Failure {
    let message = format!(
        "HTTP {} without an error type: {}",
        status.map_or_else(|| "error".to_owned(), |status| status.to_string()),
        message.unwrap_or("no message")
    );
    match status {
        Some(429) => Failure::Transient(ModelError::Throttled(message)),
        Some(500..=599) => Failure::Transient(ModelError::Provider(message)),
        _ => Failure::Permanent(ModelError::Provider(message)),
    }
}
