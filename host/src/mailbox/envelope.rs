//! The job envelope: what a producer puts on a queue (docs/mailbox.md).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::policy::{Budget, PolicyNarrowing};

/// The envelope version this host reads and writes.
pub const ENVELOPE_VERSION: u32 = 1;

/// Longest accepted `request_id`, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 256;

/// One agent job as a producer enqueues it. Unknown fields are refused, so a
/// typo never silently drops a budget or a narrowing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Format version; this host reads [`ENVELOPE_VERSION`].
    pub version: u32,
    /// The caller's idempotency key: one reply per request id, however often
    /// the job is sent or delivered.
    pub request_id: String,
    /// The agent component: a path, a `file://` URL or an `s3://bucket/key` URL.
    pub agent: String,
    /// The agent's input.
    #[serde(default = "empty_object")]
    pub input: serde_json::Value,
    /// Budgets, narrowing those of the agent's policy.
    #[serde(default, skip_serializing_if = "is_default")]
    pub budget: Budget,
    /// Unix time in milliseconds after which the job is not worth running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
    /// Narrowing of the agent's policy for this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyNarrowing>,
    /// The queue the reply is also sent to, besides being stored by request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The caller's W3C trace context, continued by the job's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Free-form labels, carried into logs and the reply.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Where an agent component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRef {
    /// A file on the worker's filesystem.
    File(PathBuf),
    /// An object in S3.
    S3 {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
    },
}

/// Why an envelope was refused. Refused envelopes are dead-lettered with
/// this message as the reason, never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("malformed job envelope: {0}")]
    Malformed(String),
    /// A version this host does not read.
    #[error("unsupported envelope version {0} (this host reads version {ENVELOPE_VERSION})")]
    Version(u32),
    /// A field whose value is not acceptable.
    #[error("invalid envelope field `{field}`: {reason}")]
    Field {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Envelope {
    /// A version-1 envelope with an empty input and nothing else set.
    pub fn new(request_id: impl Into<String>, agent: impl Into<String>) -> Self {
        Self {
            version: ENVELOPE_VERSION,
            request_id: request_id.into(),
            agent: agent.into(),
            input: empty_object(),
            budget: Budget::default(),
            deadline: None,
            policy: None,
            reply_to: None,
            traceparent: None,
            tags: BTreeMap::new(),
        }
    }

    /// Parse and validate an envelope.
    pub fn parse(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let envelope: Self = serde_json::from_slice(bytes).map_err(|err| EnvelopeError::Malformed(err.to_string()))?;
        envelope.validate()?;
        Ok(envelope)
    }

    /// The envelope as JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Check what serde cannot: version, ids, the agent reference, the trace context.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        if self.version != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(self.version));
        }
        validate_request_id(&self.request_id)?;
        self.agent_ref()?;
        if let Some(traceparent) = &self.traceparent {
            validate_traceparent(traceparent)?;
        }
        if let Some(reply_to) = &self.reply_to {
            validate_queue_name(reply_to).map_err(|reason| EnvelopeError::Field {
                field: "reply_to",
                reason,
            })?;
        }
        Ok(())
    }

    /// Where the agent component comes from.
    pub fn agent_ref(&self) -> Result<AgentRef, EnvelopeError> {
        let invalid = |reason: String| EnvelopeError::Field { field: "agent", reason };
        if self.agent.is_empty() {
            return Err(invalid("must not be empty".into()));
        }
        if let Some(rest) = self.agent.strip_prefix("s3://") {
            return match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => Ok(AgentRef::S3 {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                }),
                _ => Err(invalid(format!("`{}` is not s3://BUCKET/KEY", self.agent))),
            };
        }
        if self.agent.starts_with("file://") {
            let url = url::Url::parse(&self.agent).map_err(|err| invalid(format!("`{}`: {err}", self.agent)))?;
            return url
                .to_file_path()
                .map(AgentRef::File)
                .map_err(|()| invalid(format!("`{}` is not a local file URL", self.agent)));
        }
        if let Some((scheme, _)) = self.agent.split_once("://") {
            return Err(invalid(format!(
                "unsupported scheme `{scheme}` (use a path, file:// or s3://)"
            )));
        }
        Ok(AgentRef::File(PathBuf::from(&self.agent)))
    }
}

/// Request ids are keys in every backend: bounded, printable, no spaces.
pub fn validate_request_id(request_id: &str) -> Result<(), EnvelopeError> {
    let invalid = |reason: &str| EnvelopeError::Field {
        field: "request_id",
        reason: reason.to_owned(),
    };
    if request_id.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(invalid("longer than 256 bytes"));
    }
    if request_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("must not contain whitespace or control characters"));
    }
    Ok(())
}

/// Queue names become parts of backend keys: letters, digits, `-`, `_`, `.`, `:`.
pub fn validate_queue_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if name.is_empty() || name.len() > 128 || !name.chars().all(allowed) {
        return Err(format!(
            "queue name `{name}` must be 1-128 characters of letters, digits, `-`, `_`, `.`, `:`"
        ));
    }
    Ok(())
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, ids not all zero.
fn validate_traceparent(value: &str) -> Result<(), EnvelopeError> {
    let parts: Vec<&str> = value.split('-').collect();
    let is_hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let not_zero = |s: &str| s.bytes().any(|b| b != b'0');
    let valid = matches!(parts.as_slice(), [version, trace, span, flags]
        if is_hex(version, 2) && *version != "ff" && is_hex(trace, 32) && not_zero(trace)
            && is_hex(span, 16) && not_zero(span) && is_hex(flags, 2));
    if valid {
        Ok(())
    } else {
        Err(EnvelopeError::Field {
            field: "traceparent",
            reason: format!("`{value}` is not a W3C traceparent"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Envelope, EnvelopeError> {
        Envelope::parse(json.as_bytes())
    }

    #[test]
    fn minimal_envelope_defaults_its_input_to_an_empty_object() {
        let envelope = parse(r#"{"version":1,"request_id":"r1","agent":"agents/hello.wasm"}"#).unwrap();
        assert_eq!(envelope.input, serde_json::json!({}));
        assert_eq!(
            envelope.agent_ref().unwrap(),
            AgentRef::File("agents/hello.wasm".into())
        );
    }

    #[test]
    fn full_envelope_round_trips() {
        let mut envelope = Envelope::new("order-7", "s3://agents/hello.wasm");
        envelope.input = serde_json::json!({"name": "wink"});
        envelope.budget.max_turns = Some(3);
        envelope.deadline = Some(1_900_000_000_000);
        envelope.reply_to = Some("replies".into());
        envelope.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        envelope.tags.insert("team".into(), "search".into());
        let parsed = Envelope::parse(&envelope.to_bytes()).unwrap();
        assert_eq!(parsed, envelope);
        assert_eq!(
            parsed.agent_ref().unwrap(),
            AgentRef::S3 {
                bucket: "agents".into(),
                key: "hello.wasm".into()
            }
        );
    }

    #[test]
    fn refusals_name_the_bad_value() {
        let cases = [
            ("not json", "malformed job envelope"),
            (r#"{"version":2,"request_id":"r","agent":"a.wasm"}"#, "version 2"),
            (r#"{"version":1,"request_id":"","agent":"a.wasm"}"#, "`request_id`"),
            (r#"{"version":1,"request_id":"a b","agent":"a.wasm"}"#, "whitespace"),
            (
                r#"{"version":1,"request_id":"r","agent":"http://x/a.wasm"}"#,
                "scheme `http`",
            ),
            (
                r#"{"version":1,"request_id":"r","agent":"s3://bucket"}"#,
                "s3://BUCKET/KEY",
            ),
            (
                r#"{"version":1,"request_id":"r","agent":"a.wasm","budgett":{}}"#,
                "unknown field `budgett`",
            ),
            (
                r#"{"version":1,"request_id":"r","agent":"a.wasm","traceparent":"00-zz"}"#,
                "`00-zz`",
            ),
            (
                r#"{"version":1,"request_id":"r","agent":"a.wasm","reply_to":"a b"}"#,
                "queue name `a b`",
            ),
        ];
        for (json, expected) in cases {
            let err = parse(json).expect_err(json).to_string();
            assert!(err.contains(expected), "{json}: {err}");
        }
    }

    #[test]
    fn file_urls_become_paths() {
        let envelope = Envelope::new("r", "file:///srv/agents/hello.wasm");
        assert_eq!(
            envelope.agent_ref().unwrap(),
            AgentRef::File("/srv/agents/hello.wasm".into())
        );
    }
}
