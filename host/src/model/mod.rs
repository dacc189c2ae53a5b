//! Model inference on the agent's behalf.
//!
//! Agents never hold credentials or reach a model themselves: they call the
//! `model` import, and the host serves it through a [`ModelProvider`]. The
//! request and response types are those of the WIT contract
//! ([`crate::bindings::model`]), which follows the Bedrock Converse shape.

pub mod bedrock;
pub mod budget;
mod policy;
mod scripted;
mod spec;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::telemetry::Metrics;

pub use crate::bindings::model::{
    ContentBlock, ConverseRequest, ConverseResponse, InferenceConfig, Message, Role, StopReason, ToolResult, ToolUse,
};
pub use budget::{Budget, LedgerError, MemoryUsageLedger, Price, PriceTable, Remaining, Spent, UsageLedger};
pub use policy::{CallAccount, ModelPolicy};
pub use scripted::{Script, ScriptError, ScriptedProvider};
pub use spec::{ModelSpec, ModelSpecError};

/// Tokens accounted for one or more calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
}

impl std::ops::AddAssign<crate::bindings::model::Usage> for Usage {
    fn add_assign(&mut self, usage: crate::bindings::model::Usage) {
        self.input_tokens += u64::from(usage.input_tokens);
        self.output_tokens += u64::from(usage.output_tokens);
    }
}

/// The job a model call belongs to.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The job's idempotency key.
    pub request_id: Arc<str>,
    /// The job's host-side id.
    pub job_id: Arc<str>,
    /// How many model calls the job made before this one.
    pub turn: u32,
    /// When the job must be finished. Providers start no attempt and no
    /// retry past it, but arm no timer for it: the job's own deadline timer
    /// drops the job, and the call in flight with it, at this instant. A
    /// caller outside a job bounds the call itself (`tokio::time::timeout_at`).
    pub deadline: Instant,
    /// Where providers record throttles and circuit breaker changes (none: nowhere).
    pub metrics: Option<Arc<Metrics>>,
}

/// Why a model call failed, as the guest will see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A budget dimension is exhausted.
    #[error("budget exceeded: {0}")]
    BudgetExceeded(String),
    /// The job's deadline leaves no time for the call.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// Throttled, and retries ran out.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The agent may not use this model.
    #[error("model not allowed: {0}")]
    NotAllowed(String),
    /// The request is invalid.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The provider failed.
    #[error("provider error: {0}")]
    Provider(String),
}

impl ModelError {
    /// Stable lower-case name of the error class, for metrics and spans.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BudgetExceeded(_) => "budget_exceeded",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Throttled(_) => "throttled",
            Self::NotAllowed(_) => "not_allowed",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Provider(_) => "provider",
        }
    }
}

impl From<ModelError> for crate::bindings::model::ModelError {
    fn from(err: ModelError) -> Self {
        use crate::bindings::model::ModelError as Wit;
        match err {
            ModelError::BudgetExceeded(m) => Wit::BudgetExceeded(m),
            ModelError::DeadlineExceeded => Wit::DeadlineExceeded,
            ModelError::Throttled(m) => Wit::Throttled(m),
            ModelError::NotAllowed(m) => Wit::NotAllowed(m),
            ModelError::InvalidRequest(m) => Wit::InvalidRequest(m),
            ModelError::Provider(m) => Wit::Provider(m),
        }
    }
}

/// A source of model responses.
#[async_trait]
pub trait ModelProvider: Send + Sync + std::fmt::Debug {
    /// Answer one converse request.
    async fn converse(&self, request: &ConverseRequest, context: &CallContext) -> Result<ConverseResponse, ModelError>;

    /// The model serving requests that name none, if the provider has one
    /// (used for allowlists and prices).
    fn default_model(&self) -> Option<&str> {
        None
    }

    /// The provider's name in the OpenTelemetry GenAI conventions
    /// (`gen_ai.system`), e.g. `aws.bedrock`.
    fn provider_name(&self) -> &'static str {
        "_OTHER"
    }
}

/// The text blocks of a message, concatenated.
pub fn message_text(message: &Message) -> String {
    message
        .content
        .iter()
        .filter_map(|block| match block {
            ContentBlock::Text(text) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// A rough token count for providers that do not report one: four bytes a token.
pub(crate) fn estimate_tokens(text: &str) -> u32 {
    tokens_for_bytes(text.len())
}

/// [`estimate_tokens`] of a text of `bytes` bytes.
pub(crate) fn tokens_for_bytes(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX)
}
