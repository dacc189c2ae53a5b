//! The model sections: `[model]` and `[bedrock]` (`[budget]` and `[prices]`
//! reuse the policy's budget and the price table's types).

use std::num::NonZeroU32;

use serde::Deserialize;

use super::ConfigError;
use crate::model::ModelSpec;
use crate::model::bedrock::{BedrockOptions, BreakerConfig, Guardrail, RetryPolicy};
use crate::policy::HumanDuration;

/// `[model]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The provider when `--model` / `WINK_MODEL` names none: `echo`,
    /// `scripted:FILE` or `bedrock:MODEL_ID`. Default: `echo`.
    pub default: Option<ModelSpec>,
}

/// `[bedrock]`: every key optional; unset ones take the flag's value, else
/// the built-in default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BedrockSection {
    /// AWS region (`--bedrock-region`). Default: the AWS chain's.
    pub region: Option<String>,
    /// Endpoint override (`--bedrock-endpoint`). Default: the regional endpoint.
    pub endpoint_url: Option<String>,
    /// Use ConverseStream (`--bedrock-stream`). Default: false.
    pub stream: Option<bool>,
    /// `[bedrock.retry]`.
    #[serde(default)]
    pub retry: RetrySection,
    /// `[bedrock.breaker]`.
    #[serde(default)]
    pub breaker: BreakerSection,
    /// `[bedrock.guardrail]`.
    #[serde(default)]
    pub guardrail: GuardrailSection,
}

/// `[bedrock.retry]`: retries of throttling, 5xx and network failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Attempts per call, the first included (`--bedrock-max-attempts`). Default: 6.
    pub max_attempts: Option<NonZeroU32>,
    /// Backoff ceiling before the first retry (`--bedrock-retry-base-delay`). Default: 200ms.
    pub base_delay: Option<HumanDuration>,
    /// Largest backoff ceiling (`--bedrock-retry-max-delay`). Default: 10s.
    pub max_delay: Option<HumanDuration>,
}

/// `[bedrock.breaker]`: the per-model circuit breaker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSection {
    /// Consecutive failed attempts that open the circuit (`--bedrock-breaker-threshold`). Default: 10.
    pub failure_threshold: Option<NonZeroU32>,
    /// How long an open circuit fails calls before one probe (`--bedrock-breaker-cooldown`). Default: 30s.
    pub cool_down: Option<HumanDuration>,
}

/// `[bedrock.guardrail]`: a guardrail applied to every call; identifier and
/// version go together. Default: none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailSection {
    /// Guardrail id or ARN (`--bedrock-guardrail-id`).
    pub identifier: Option<String>,
    /// `DRAFT` or a version number (`--bedrock-guardrail-version`).
    pub version: Option<String>,
    /// Ask Bedrock for the guardrail trace (`--bedrock-guardrail-trace`). Default: false.
    pub trace: Option<bool>,
}

impl BedrockSection {
    /// This section with every key set in `over` replacing its own: how
    /// flags and environment variables override the file.
    pub fn overridden_by(self, over: Self) -> Self {
        Self {
            region: over.region.or(self.region),
            endpoint_url: over.endpoint_url.or(self.endpoint_url),
            stream: over.stream.or(self.stream),
            retry: RetrySection {
                max_attempts: over.retry.max_attempts.or(self.retry.max_attempts),
                base_delay: over.retry.base_delay.or(self.retry.base_delay),
                max_delay: over.retry.max_delay.or(self.retry.max_delay),
            },
            breaker: BreakerSection {
                failure_threshold: over.breaker.failure_threshold.or(self.breaker.failure_threshold),
                cool_down: over.breaker.cool_down.or(self.breaker.cool_down),
            },
            guardrail: GuardrailSection {
                identifier: over.guardrail.identifier.or(self.guardrail.identifier),
                version: over.guardrail.version.or(self.guardrail.version),
                trace: over.guardrail.trace.or(self.guardrail.trace),
            },
        }
    }

    /// The provider options these settings describe, unset ones at their
    /// defaults; `default_model` serves requests that name no model.
    pub fn options(&self, default_model: Option<String>) -> Result<BedrockOptions, ConfigError> {
        if let Some(region) = &self.region
            && (region.is_empty() || region.contains(char::is_whitespace))
        {
            return Err(ConfigError::invalid(
                "bedrock.region (--bedrock-region)",
                format!("{region:?} is not an AWS region"),
            ));
        }
        if let Some(url) = &self.endpoint_url {
            check_endpoint(url)?;
        }
        Ok(BedrockOptions {
            default_model,
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            stream: self.stream.unwrap_or(false),
            guardrail: self.guardrail.resolve()?,
            retry: self.retry.resolve()?,
            breaker: self.breaker.resolve(),
        })
    }
}

fn check_endpoint(url: &str) -> Result<(), ConfigError> {
    let setting = "bedrock.endpoint_url (--bedrock-endpoint)";
    let parsed = url::Url::parse(url).map_err(|err| ConfigError::invalid(setting, format!("{url:?}: {err}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(ConfigError::invalid(
            setting,
            format!("{url:?} is not an http(s) URL with a host"),
        ));
    }
    Ok(())
}

impl RetrySection {
    fn resolve(&self) -> Result<RetryPolicy, ConfigError> {
        let default = RetryPolicy::default();
        let policy = RetryPolicy {
            max_attempts: self.max_attempts.map_or(default.max_attempts, NonZeroU32::get),
            base_delay: self.base_delay.map_or(default.base_delay, |d| d.0),
            max_delay: self.max_delay.map_or(default.max_delay, |d| d.0),
        };
        if policy.base_delay > policy.max_delay {
            return Err(ConfigError::invalid(
                "bedrock.retry.base_delay (--bedrock-retry-base-delay)",
                format!(
                    "{}ms is above max_delay {}ms",
                    policy.base_delay.as_millis(),
                    policy.max_delay.as_millis()
                ),
            ));
        }
        Ok(policy)
    }
}

impl BreakerSection {
    fn resolve(&self) -> BreakerConfig {
        let default = BreakerConfig::default();
        BreakerConfig {
            failure_threshold: self
                .failure_threshold
                .map_or(default.failure_threshold, NonZeroU32::get),
            cool_down: self.cool_down.map_or(default.cool_down, |d| d.0),
        }
    }
}

impl GuardrailSection {
    fn resolve(&self) -> Result<Option<Guardrail>, ConfigError> {
        const ID: &str = "bedrock.guardrail.identifier (--bedrock-guardrail-id)";
        const VERSION: &str = "bedrock.guardrail.version (--bedrock-guardrail-version)";
        match (&self.identifier, &self.version) {
            (None, None) if self.trace.is_some() => Err(ConfigError::invalid(
                ID,
                "a guardrail trace is asked for, but no guardrail is set",
            )),
            (None, None) => Ok(None),
            (Some(identifier), None) => Err(ConfigError::invalid(
                VERSION,
                format!("guardrail {identifier:?} needs a version (DRAFT or a number)"),
            )),
            (None, Some(version)) => Err(ConfigError::invalid(
                ID,
                format!("guardrail version {version:?} needs a guardrail identifier"),
            )),
            (Some(identifier), Some(version)) => {
                if !is_guardrail_identifier(identifier) {
                    return Err(ConfigError::invalid(
                        ID,
                        format!("{identifier:?} is not a guardrail id (lower-case letters and digits) or ARN"),
                    ));
                }
                if !is_guardrail_version(version) {
                    return Err(ConfigError::invalid(
                        VERSION,
                        format!("{version:?} is not DRAFT or a version number"),
                    ));
                }
                Ok(Some(Guardrail {
                    identifier: identifier.clone(),
                    version: version.clone(),
                    trace: self.trace.unwrap_or(false),
                }))
            }
        }
    }
}

/// Bedrock's pattern: an id of lower-case letters and digits, or a guardrail ARN.
fn is_guardrail_identifier(identifier: &str) -> bool {
    let is_id = |id: &str| !id.is_empty() && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    match identifier.strip_prefix("arn:") {
        Some(rest) => rest.contains(":guardrail/") && rest.rsplit('/').next().is_some_and(is_id),
        None => is_id(identifier),
    }
}

/// Bedrock's pattern: `DRAFT`, or 1 to 99999999 without leading zeros.
fn is_guardrail_version(version: &str) -> bool {
    version == "DRAFT"
        || (!version.is_empty()
            && version.len() <= 8
            && !version.starts_with('0')
            && version.bytes().all(|b| b.is_ascii_digit()))
}
