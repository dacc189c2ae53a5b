//! A job as the runtime sees it: what goes in, what comes out, how it failed.

use std::time::Duration;

use crate::model::Usage;
use crate::runtime::{LimitExceeded, LoadError};
use crate::sandbox::{Captured, SandboxError};

/// One agent job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    /// The caller's idempotency key, stable across redeliveries.
    pub request_id: String,
    /// This host's identifier for the job.
    pub job_id: String,
    /// Delivery attempt, starting at 1.
    pub attempt: u32,
    /// The input, as JSON text.
    pub input: String,
    /// The caller's W3C `traceparent`, continued by the span
    /// [`Runtime::run_agent`](crate::runtime::Runtime::run_agent) opens for
    /// the job.
    pub traceparent: Option<String>,
}

impl JobRequest {
    /// A first-attempt job whose job id is its request id.
    pub fn new(request_id: impl Into<String>, input: impl Into<String>) -> Self {
        let request_id = request_id.into();
        Self {
            job_id: request_id.clone(),
            request_id,
            attempt: 1,
            input: input.into(),
            traceparent: None,
        }
    }
}

/// What running a job produced: its outcome and what it consumed.
#[derive(Debug)]
pub struct JobReport {
    /// The agent's output as JSON text, or why there is none.
    pub outcome: Result<String, JobError>,
    /// Resource accounting, filled in whatever the outcome.
    pub stats: JobStats,
}

/// What a job consumed.
#[derive(Debug, Clone, Default)]
pub struct JobStats {
    /// Fuel burned by the agent's own code (tools are accounted separately).
    pub fuel_consumed: u64,
    /// Wall-clock time from admission to completion.
    pub elapsed: Duration,
    /// Model calls made.
    pub model_calls: u32,
    /// Tool calls made.
    pub tool_calls: u32,
    /// Tokens accounted across model calls.
    pub usage: Usage,
    /// The agent's stdout.
    pub stdout: Captured,
    /// The agent's stderr.
    pub stderr: Captured,
}

/// How an agent reported its own failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentFailureKind {
    /// The input was not what the agent expects.
    InvalidInput,
    /// A model call failed and the agent gave up.
    Model,
    /// A budget ran out.
    BudgetExceeded,
    /// Anything else.
    Failed,
}

impl AgentFailureKind {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::Model => "model",
            Self::BudgetExceeded => "budget_exceeded",
            Self::Failed => "failed",
        }
    }
}

/// Why a job produced no output.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job's input is not JSON.
    #[error("job input is not valid JSON: {0}")]
    InvalidInput(String),
    /// The component could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The sandbox could not be set up.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// Instantiation failed (missing import, instance pool exhausted, ...).
    #[error("cannot instantiate agent: {0}")]
    Instantiate(String),
    /// A host service failed while the agent called it (the usage ledger
    /// unreachable); another attempt may succeed.
    #[error("host service failed: {0}")]
    Host(String),
    /// The agent went over a limit.
    #[error(transparent)]
    LimitExceeded(#[from] LimitExceeded),
    /// The agent trapped (panic, unreachable, out-of-bounds access, ...).
    #[error("agent trapped: {0}")]
    Trap(String),
    /// The agent returned an error.
    #[error("agent failed ({}): {message}", kind.as_str())]
    Agent {
        /// The agent's classification.
        kind: AgentFailureKind,
        /// The agent's message.
        message: String,
    },
    /// The agent returned text that is not JSON.
    #[error("agent output is not valid JSON: {0}")]
    InvalidOutput(String),
}

impl JobError {
    /// Stable lower-case name of the error class, for logs, metrics and
    /// dead-letter records.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalid_input",
            Self::Load(_) => "load",
            Self::Sandbox(_) => "sandbox",
            Self::Instantiate(_) => "instantiate",
            Self::Host(_) => "host",
            Self::LimitExceeded(_) => "limit_exceeded",
            Self::Trap(_) => "trap",
            Self::Agent { .. } => "agent",
            Self::InvalidOutput(_) => "invalid_output",
        }
    }
}
