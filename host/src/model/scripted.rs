//! A provider that replays responses from a script, for local runs and tests.
//!
//! Responses are served by turn: a job's first model call gets the first
//! response, its second call the second, and so on. Serving by turn rather
//! than from a shared cursor lets one script serve any number of concurrent
//! jobs, and a redelivered job replays the same conversation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::{
    CallContext, ContentBlock, ConverseRequest, ConverseResponse, Message, ModelError, ModelProvider, Role, StopReason,
    ToolUse, estimate_tokens, message_text,
};
use crate::bindings::model::Usage as WitUsage;

/// A parsed script: the responses to serve, in order.
#[derive(Debug, Clone)]
pub struct Script {
    responses: Vec<ScriptedResponse>,
}

#[derive(Debug, Clone)]
struct ScriptedResponse {
    message: Message,
    stop_reason: StopReason,
    usage: Option<WitUsage>,
    delay: Duration,
    expect: Option<Expectation>,
}

/// What the request answered by a scripted response must look like; a
/// mismatch fails the call, so a script doubles as a recorded transcript
/// that checks the agent still asks what it asked when it was recorded.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    /// The request's `model` (after the job's default is applied).
    model: Option<String>,
    /// A substring of the last user message's text.
    last_user_text_contains: Option<String>,
    /// The last user message answers this tool-use id.
    tool_result_for: Option<String>,
}

impl Expectation {
    /// The first unmet expectation, described for the agent's developer.
    fn check(&self, request: &ConverseRequest) -> Result<(), String> {
        if let Some(model) = &self.model
            && request.model.as_deref() != Some(model.as_str())
        {
            return Err(format!("expected model {model}, got {:?}", request.model));
        }
        let last_user = request.messages.iter().rev().find(|m| m.role == Role::User);
        if let Some(needle) = &self.last_user_text_contains {
            let text = last_user.map(message_text).unwrap_or_default();
            if !text.contains(needle.as_str()) {
                return Err(format!(
                    "expected the last user text to contain {needle:?}, got {text:?}"
                ));
            }
        }
        if let Some(id) = &self.tool_result_for {
            let answered = last_user.is_some_and(|m| {
                m.content
                    .iter()
                    .any(|b| matches!(b, ContentBlock::ToolResult(r) if &r.tool_use_id == id))
            });
            if !answered {
                return Err(format!("expected a tool result for {id} in the last user message"));
            }
        }
        Ok(())
    }
}

/// A script file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The file could not be read.
    #[error("cannot read model script {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid script.
    #[error("invalid model script {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde's reason, with line and column.
        message: String,
    },
}

impl Script {
    /// Read and validate a script file.
    pub async fn load(path: &Path) -> Result<Self, ScriptError> {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| ScriptError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Self::parse(&text).map_err(|message| ScriptError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parse a script from JSON text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: ScriptFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let responses = file
            .responses
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.into_response().map_err(|e| format!("response {i}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { responses })
    }

    /// A script answering every call with the same text after `delay`.
    pub fn repeating_text(text: &str, delay: Duration) -> Self {
        Self {
            responses: vec![ScriptedResponse {
                message: assistant(vec![ContentBlock::Text(text.to_owned())]),
                stop_reason: StopReason::EndTurn,
                usage: None,
                delay,
                expect: None,
            }],
        }
    }

    /// Number of responses.
    pub fn len(&self) -> usize {
        self.responses.len()
    }

    /// Whether the script has no responses.
    pub fn is_empty(&self) -> bool {
        self.responses.is_empty()
    }
}

/// Serves a [`Script`], or echoes the user when it has none.
#[derive(Debug, Clone, Default)]
pub struct ScriptedProvider {
    script: Option<Script>,
    /// Serve the last response again once the script runs out (benchmarks).
    repeat_last: bool,
}

impl ScriptedProvider {
    /// Echo the last user message's text back, ending the turn.
    pub fn echo() -> Self {
        Self::default()
    }

    /// Serve `script`, one response per turn; calls past its end fail.
    pub fn new(script: Script) -> Self {
        Self {
            script: Some(script),
            repeat_last: false,
        }
    }

    /// Serve `script` and keep serving its last response once it runs out.
    pub fn repeating(script: Script) -> Self {
        Self {
            script: Some(script),
            repeat_last: true,
        }
    }

    fn scripted<'s>(&self, script: &'s Script, turn: usize) -> Result<&'s ScriptedResponse, ModelError> {
        let index = if self.repeat_last {
            turn.min(script.len().saturating_sub(1))
        } else {
            turn
        };
        script.responses.get(index).ok_or_else(|| {
            ModelError::Provider(format!(
                "model script exhausted: call {} but the script has {} responses",
                turn + 1,
                script.len()
            ))
        })
    }
}

#[async_trait]
impl ModelProvider for ScriptedProvider {
    fn provider_name(&self) -> &'static str {
        "wink.scripted"
    }

    async fn converse(&self, request: &ConverseRequest, context: &CallContext) -> Result<ConverseResponse, ModelError> {
        if request.messages.is_empty() {
            return Err(ModelError::InvalidRequest("the conversation has no messages".into()));
        }
        let Some(script) = &self.script else {
            return Ok(echo(request));
        };
        let scripted = self.scripted(script, context.turn as usize)?;
        if let Some(expect) = &scripted.expect {
            expect.check(request).map_err(|unmet| {
                ModelError::Provider(format!(
                    "model script expectation failed at call {}: {unmet}",
                    context.turn + 1
                ))
            })?;
        }
        if !scripted.delay.is_zero() {
            tokio::time::sleep(scripted.delay).await;
        }
        let usage = scripted.usage.unwrap_or_else(|| WitUsage {
            input_tokens: input_tokens(request),
            output_tokens: estimate_tokens(&message_text(&scripted.message)),
        });
        Ok(ConverseResponse {
            message: scripted.message.clone(),
            stop_reason: scripted.stop_reason,
            usage,
        })
    }
}

fn echo(request: &ConverseRequest) -> ConverseResponse {
    let last_user = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(message_text)
        .unwrap_or_default();
    let text = format!("echo: {last_user}");
    ConverseResponse {
        usage: WitUsage {
            input_tokens: input_tokens(request),
            output_tokens: estimate_tokens(&text),
        },
        message: assistant(vec![ContentBlock::Text(text)]),
        stop_reason: StopReason::EndTurn,
    }
}

fn input_tokens(request: &ConverseRequest) -> u32 {
    let system: u32 = request.system.iter().map(|s| estimate_tokens(s)).sum();
    let messages: u32 = request.messages.iter().map(|m| estimate_tokens(&message_text(m))).sum();
    system.saturating_add(messages)
}

fn assistant(content: Vec<ContentBlock>) -> Message {
    Message {
        role: Role::Assistant,
        content,
    }
}

/// The on-disk script format (see docs/model-script.md).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    responses: Vec<ResponseFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseFile {
    content: Vec<BlockFile>,
    #[serde(default)]
    stop_reason: Option<StopReasonFile>,
    #[serde(default)]
    usage: Option<UsageFile>,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    expect: Option<Expectation>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum BlockFile {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
    },
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum StopReasonFile {
    EndTurn,
    ToolUse,
    MaxTokens,
    StopSequence,
    GuardrailIntervened,
    ContentFiltered,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageFile {
    input_tokens: u32,
    output_tokens: u32,
}

impl ResponseFile {
    fn into_response(self) -> Result<ScriptedResponse, String> {
        if self.content.is_empty() {
            return Err("content is empty".into());
        }
        let has_tool_use = self.content.iter().any(|b| matches!(b, BlockFile::ToolUse { .. }));
        let stop_reason = match self.stop_reason {
            Some(reason) => reason.into(),
            None if has_tool_use => StopReason::ToolUse,
            None => StopReason::EndTurn,
        };
        let content = self
            .content
            .into_iter()
            .map(|block| match block {
                BlockFile::Text(text) => ContentBlock::Text(text),
                BlockFile::ToolUse { id, name, input } => ContentBlock::ToolUse(ToolUse {
                    id,
                    name,
                    input: input.to_string(),
                }),
            })
            .collect();
        Ok(ScriptedResponse {
            message: assistant(content),
            stop_reason,
            usage: self.usage.map(|u| WitUsage {
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
            }),
            delay: Duration::from_millis(self.delay_ms),
            expect: self.expect,
        })
    }
}

impl From<StopReasonFile> for StopReason {
    fn from(reason: StopReasonFile) -> Self {
        match reason {
            StopReasonFile::EndTurn => Self::EndTurn,
            StopReasonFile::ToolUse => Self::ToolUse,
            StopReasonFile::MaxTokens => Self::MaxTokens,
            StopReasonFile::StopSequence => Self::StopSequence,
            StopReasonFile::GuardrailIntervened => Self::GuardrailIntervened,
            StopReasonFile::ContentFiltered => Self::ContentFiltered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    fn context(turn: u32) -> CallContext {
        CallContext {
            request_id: Arc::from("r"),
            job_id: Arc::from("j"),
            turn,
            deadline: Instant::now() + Duration::from_secs(5),
            metrics: None,
        }
    }

    fn user(text: &str) -> ConverseRequest {
        ConverseRequest {
            model: None,
            system: vec![],
            messages: vec![Message {
                role: Role::User,
                content: vec![ContentBlock::Text(text.into())],
            }],
            tools: vec![],
            config: crate::bindings::model::InferenceConfig {
                max_tokens: None,
                temperature: None,
                top_p: None,
                top_k: None,
                stop_sequences: vec![],
            },
        }
    }

    #[tokio::test]
    async fn serves_responses_by_turn_and_fails_past_the_end() -> Result<(), String> {
        let script = Script::parse(
            r#"{"responses": [
                {"content": [{"tool_use": {"id": "t1", "name": "read_file", "input": {"path": "a"}}}]},
                {"content": [{"text": "done"}], "usage": {"input_tokens": 3, "output_tokens": 1}}
            ]}"#,
        )?;
        let provider = ScriptedProvider::new(script);
        let first = provider
            .converse(&user("go"), &context(0))
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(first.stop_reason, StopReason::ToolUse);
        assert!(matches!(&first.message.content[0], ContentBlock::ToolUse(t) if t.input == r#"{"path":"a"}"#));
        let second = provider
            .converse(&user("go"), &context(1))
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(message_text(&second.message), "done");
        assert_eq!(second.usage.input_tokens, 3);
        let third = provider.converse(&user("go"), &context(2)).await;
        assert!(matches!(third, Err(ModelError::Provider(m)) if m.contains("exhausted")));
        Ok(())
    }

    #[tokio::test]
    async fn echo_answers_with_the_last_user_text() -> Result<(), ModelError> {
        let response = ScriptedProvider::echo().converse(&user("hi"), &context(0)).await?;
        assert_eq!(message_text(&response.message), "echo: hi");
        assert_eq!(response.stop_reason, StopReason::EndTurn);
        Ok(())
    }

    #[tokio::test]
    async fn expectations_check_each_request_and_name_the_mismatch() -> Result<(), String> {
        let script = Script::parse(
            r#"{"responses": [
                {"content": [{"text": "a"}], "expect": {"last_user_text_contains": "notes", "model": "m1"}},
                {"content": [{"text": "b"}], "expect": {"tool_result_for": "t1"}}
            ]}"#,
        )?;
        let provider = ScriptedProvider::new(script);
        let mut request = user("read the notes");
        request.model = Some("m1".into());
        provider
            .converse(&request, &context(0))
            .await
            .map_err(|e| e.to_string())?;
        let err = provider
            .converse(&user("go"), &context(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expectation failed at call 2: expected a tool result for t1"),
            "{err}"
        );
        let err = provider
            .converse(&user("other"), &context(0))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected model m1, got None"), "{err}");
        let mut other = user("other");
        other.model = Some("m1".into());
        let err = provider.converse(&other, &context(0)).await.unwrap_err().to_string();
        assert!(
            err.contains("expected the last user text to contain \"notes\""),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn rejects_unknown_fields_and_empty_content() {
        let err = Script::parse(r#"{"responses": [{"content": [], "x": 1}]}"#).unwrap_err();
        assert!(err.contains("unknown field `x`"), "{err}");
        let err = Script::parse(r#"{"responses": [{"content": []}]}"#).unwrap_err();
        assert!(err.contains("response 0: content is empty"), "{err}");
    }
}
