//! Errors that cross the component boundary.

use std::fmt;

/// Why an agent failed; returned from [`Agent::run`](crate::Agent::run).
///
/// `?` converts the other SDK errors into it, so most agents never build one by
/// hand except for [`AgentError::InvalidInput`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentError {
    /// The job's input is not what the agent expects.
    InvalidInput(String),
    /// A model call failed and the agent gave up.
    Model(String),
    /// A budget dimension ran out before the agent finished.
    BudgetExceeded(String),
    /// Any other failure.
    Failed(String),
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidInput(reason) => write!(f, "invalid input: {reason}"),
            Self::Model(reason) => write!(f, "model error: {reason}"),
            Self::BudgetExceeded(reason) => write!(f, "budget exceeded: {reason}"),
            Self::Failed(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for AgentError {}

impl From<ToolError> for AgentError {
    fn from(err: ToolError) -> Self {
        Self::Failed(format!("tool call failed: {err}"))
    }
}

/// Why a tool call failed. Every variant carries a reason that is safe to
/// show to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolError {
    /// No tool with that name is granted to this agent.
    NotFound(String),
    /// The policy denied something the call needed (a path, a host, a tool).
    Denied(String),
    /// The input did not match the tool's schema.
    InvalidInput(String),
    /// The tool hit a sandbox limit (fuel, memory, deadline, output size).
    LimitExceeded(String),
    /// The tool ran and reported a failure.
    Failed(String),
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound(reason) => write!(f, "tool not found: {reason}"),
            Self::Denied(reason) => write!(f, "denied: {reason}"),
            Self::InvalidInput(reason) => write!(f, "invalid input: {reason}"),
            Self::LimitExceeded(reason) => write!(f, "limit exceeded: {reason}"),
            Self::Failed(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for ToolError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_error_converts_to_failed_agent_error() {
        let err = AgentError::from(ToolError::Denied("/etc".into()));
        assert_eq!(err, AgentError::Failed("tool call failed: denied: /etc".into()));
    }

    #[test]
    fn display_names_the_kind() {
        assert_eq!(AgentError::InvalidInput("x".into()).to_string(), "invalid input: x");
        assert_eq!(ToolError::Failed("boom".into()).to_string(), "boom");
    }
}
