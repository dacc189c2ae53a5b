//! Model inference performed by the host on the agent's behalf.
//!
//! The types follow the Bedrock Converse API. They are the generated WIT
//! types, with a few constructors and accessors added here.

use crate::AgentError;
use crate::agent::bindings::wink::agent::model as wire;

pub use wire::{
    BudgetStatus, ContentBlock, ConverseRequest, ConverseResponse, InferenceConfig, Message, ModelError, Role,
    StopReason, ToolResult, ToolUse, Usage,
};

/// Run one inference call; the agent is suspended until the provider answers.
pub fn converse(request: &ConverseRequest) -> Result<ConverseResponse, ModelError> {
    wire::converse(request)
}

/// What is left of the job's budget.
pub fn budget() -> BudgetStatus {
    wire::budget()
}

impl Message {
    /// A user message with one text block.
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: vec![ContentBlock::text(text)],
        }
    }

    /// An assistant message with one text block.
    pub fn assistant(text: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: vec![ContentBlock::text(text)],
        }
    }

    /// The text blocks of the message, joined by newlines.
    pub fn text(&self) -> String {
        let texts: Vec<&str> = self.content.iter().filter_map(ContentBlock::as_text).collect();
        texts.join("\n")
    }

    /// The tool requests in the message, in order.
    pub fn tool_uses(&self) -> impl Iterator<Item = &ToolUse> {
        self.content.iter().filter_map(|block| match block {
            ContentBlock::ToolUse(tool_use) => Some(tool_use),
            _ => None,
        })
    }
}

impl ContentBlock {
    /// A text block.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }

    /// A successful tool result; `output` is the tool's JSON output.
    pub fn tool_result(tool_use_id: impl Into<String>, output: impl Into<String>) -> Self {
        Self::ToolResult(ToolResult {
            tool_use_id: tool_use_id.into(),
            content: output.into(),
            is_error: false,
        })
    }

    /// A failed tool result; the model sees `reason` as a JSON string.
    pub fn tool_error(tool_use_id: impl Into<String>, reason: &str) -> Self {
        Self::ToolResult(ToolResult {
            tool_use_id: tool_use_id.into(),
            content: serde_json::Value::from(reason).to_string(),
            is_error: true,
        })
    }

    /// The text of a text block.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl ConverseRequest {
    /// A request for the job's default model, without system prompt or tools.
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            model: None,
            system: Vec::new(),
            messages,
            tools: Vec::new(),
            config: InferenceConfig::default(),
        }
    }
}

impl Default for InferenceConfig {
    /// Every parameter unset: the host's defaults apply.
    fn default() -> Self {
        Self {
            max_tokens: None,
            temperature: None,
            top_p: None,
            top_k: None,
            stop_sequences: Vec::new(),
        }
    }
}

impl StopReason {
    /// The reason in snake case, as Bedrock spells it (`end_turn`, `tool_use`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EndTurn => "end_turn",
            Self::ToolUse => "tool_use",
            Self::MaxTokens => "max_tokens",
            Self::StopSequence => "stop_sequence",
            Self::GuardrailIntervened => "guardrail_intervened",
            Self::ContentFiltered => "content_filtered",
        }
    }
}

impl Usage {
    /// No tokens.
    pub const ZERO: Self = Self {
        input_tokens: 0,
        output_tokens: 0,
    };

    /// Input plus output tokens.
    pub fn total(&self) -> u64 {
        u64::from(self.input_tokens) + u64::from(self.output_tokens)
    }
}

impl std::ops::Add for Usage {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
        }
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Self) {
        *self = *self + other;
    }
}

impl From<ModelError> for AgentError {
    /// A spent budget stays [`AgentError::BudgetExceeded`] so that the host can
    /// report it as such; every other failure becomes [`AgentError::Model`].
    fn from(err: ModelError) -> Self {
        match err {
            ModelError::BudgetExceeded(dimension) => Self::BudgetExceeded(dimension),
            ModelError::DeadlineExceeded => Self::Model("deadline exceeded".into()),
            ModelError::Throttled(reason) => Self::Model(format!("throttled: {reason}")),
            ModelError::NotAllowed(reason) => Self::Model(format!("model not allowed: {reason}")),
            ModelError::InvalidRequest(reason) => Self::Model(format!("invalid request: {reason}")),
            ModelError::Provider(reason) => Self::Model(format!("provider error: {reason}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_joins_text_blocks_only() {
        let message = Message {
            role: Role::Assistant,
            content: vec![
                ContentBlock::text("a"),
                ContentBlock::ToolUse(ToolUse {
                    id: "t1".into(),
                    name: "x".into(),
                    input: "{}".into(),
                }),
                ContentBlock::text("b"),
            ],
        };
        assert_eq!(message.text(), "a\nb");
        assert_eq!(message.tool_uses().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["t1"]);
    }

    #[test]
    fn constructors_set_role() {
        assert_eq!(Message::user("hi").role, Role::User);
        assert_eq!(Message::assistant("yo").text(), "yo");
    }

    #[test]
    fn tool_error_is_a_json_string() {
        let ContentBlock::ToolResult(result) = ContentBlock::tool_error("t1", "no \"such\" file") else {
            panic!("expected a tool result");
        };
        assert!(result.is_error);
        assert_eq!(result.content, r#""no \"such\" file""#);
    }

    #[test]
    fn usage_adds_saturating() {
        let mut usage = Usage::ZERO;
        usage += Usage {
            input_tokens: u32::MAX,
            output_tokens: 2,
        };
        usage += Usage {
            input_tokens: 1,
            output_tokens: 3,
        };
        assert_eq!((usage.input_tokens, usage.output_tokens), (u32::MAX, 5));
    }

    #[test]
    fn model_errors_map_to_agent_errors() {
        let budget = AgentError::from(ModelError::BudgetExceeded("output-tokens".into()));
        assert_eq!(budget, AgentError::BudgetExceeded("output-tokens".into()));
        let deadline = AgentError::from(ModelError::DeadlineExceeded);
        assert_eq!(deadline, AgentError::Model("deadline exceeded".into()));
    }
}
