//! Mapping between the WIT `model` types and the Bedrock Converse SDK types.

use std::collections::HashMap;

use aws_sdk_bedrockruntime::types as sdk;
use aws_smithy_types::{Document, Number};
use serde_json::Value;

use crate::bindings::model::{InferenceConfig, Usage as WitUsage};
use crate::model::{ContentBlock, ConverseRequest, Message, ModelError, Role, StopReason, ToolUse};

/// The parts of a Converse request shared by `Converse` and `ConverseStream`.
#[derive(Debug)]
pub(super) struct SdkRequest {
    pub messages: Vec<sdk::Message>,
    pub system: Vec<sdk::SystemContentBlock>,
    pub tool_config: Option<sdk::ToolConfiguration>,
    pub inference: sdk::InferenceConfiguration,
    /// `top_k` goes here: Converse has no field for it.
    pub additional_fields: Option<Document>,
}

fn invalid(what: impl std::fmt::Display) -> ModelError {
    ModelError::InvalidRequest(what.to_string())
}

/// Build the SDK request; guest-supplied JSON that does not parse is an
/// `invalid-request` naming the block.
pub(super) fn request(request: &ConverseRequest) -> Result<SdkRequest, ModelError> {
    let messages = request.messages.iter().map(message).collect::<Result<_, _>>()?;
    let system = request
        .system
        .iter()
        .map(|text| sdk::SystemContentBlock::Text(text.clone()))
        .collect();
    Ok(SdkRequest {
        messages,
        system,
        tool_config: tool_config(&request.tools)?,
        inference: inference(&request.config)?,
        additional_fields: request
            .config
            .top_k
            .map(|k| Document::Object(HashMap::from([("top_k".to_owned(), Document::from(u64::from(k)))]))),
    })
}

fn message(message: &Message) -> Result<sdk::Message, ModelError> {
    let role = match message.role {
        Role::User => sdk::ConversationRole::User,
        Role::Assistant => sdk::ConversationRole::Assistant,
    };
    let content = message
        .content
        .iter()
        .map(content_block)
        .collect::<Result<Vec<_>, _>>()?;
    sdk::Message::builder()
        .role(role)
        .set_content(Some(content))
        .build()
        .map_err(invalid)
}

fn content_block(block: &ContentBlock) -> Result<sdk::ContentBlock, ModelError> {
    Ok(match block {
        ContentBlock::Text(text) => sdk::ContentBlock::Text(text.clone()),
        ContentBlock::ToolUse(tool_use) => {
            let input = parse_json(&tool_use.input, || format!("tool-use {} input", tool_use.id))?;
            sdk::ContentBlock::ToolUse(
                sdk::ToolUseBlock::builder()
                    .tool_use_id(&tool_use.id)
                    .name(&tool_use.name)
                    .input(document(&input))
                    .build()
                    .map_err(invalid)?,
            )
        }
        ContentBlock::ToolResult(result) => {
            let content = parse_json(&result.content, || {
                format!("tool-result {} content", result.tool_use_id)
            })?;
            // Bedrock takes a JSON result as a document, but a bare string reads better as text.
            let content = match content {
                Value::String(text) => sdk::ToolResultContentBlock::Text(text),
                other => sdk::ToolResultContentBlock::Json(document(&other)),
            };
            let status = if result.is_error {
                sdk::ToolResultStatus::Error
            } else {
                sdk::ToolResultStatus::Success
            };
            sdk::ContentBlock::ToolResult(
                sdk::ToolResultBlock::builder()
                    .tool_use_id(&result.tool_use_id)
                    .content(content)
                    .status(status)
                    .build()
                    .map_err(invalid)?,
            )
        }
    })
}

fn parse_json(text: &str, what: impl FnOnce() -> String) -> Result<Value, ModelError> {
    serde_json::from_str(text).map_err(|err| invalid(format!("{} is not JSON: {err}", what())))
}

fn tool_config(tools: &[crate::bindings::types::ToolSpec]) -> Result<Option<sdk::ToolConfiguration>, ModelError> {
    if tools.is_empty() {
        return Ok(None);
    }
    let tools = tools
        .iter()
        .map(|spec| {
            let schema = parse_json(&spec.input_schema, || format!("tool {} input schema", spec.name))?;
            sdk::ToolSpecification::builder()
                .name(&spec.name)
                .description(&spec.description)
                .input_schema(sdk::ToolInputSchema::Json(document(&schema)))
                .build()
                .map(sdk::Tool::ToolSpec)
                .map_err(invalid)
        })
        .collect::<Result<Vec<_>, _>>()?;
    sdk::ToolConfiguration::builder()
        .set_tools(Some(tools))
        .build()
        .map(Some)
        .map_err(invalid)
}

fn inference(config: &InferenceConfig) -> Result<sdk::InferenceConfiguration, ModelError> {
    let max_tokens = config
        .max_tokens
        .map(|n| i32::try_from(n).map_err(|_| invalid(format!("max-tokens {n} is too large"))))
        .transpose()?;
    Ok(sdk::InferenceConfiguration::builder()
        .set_max_tokens(max_tokens)
        .set_temperature(config.temperature)
        .set_top_p(config.top_p)
        .set_stop_sequences((!config.stop_sequences.is_empty()).then(|| config.stop_sequences.clone()))
        .build())
}

/// A JSON value as a Smithy document.
pub(super) fn document(value: &Value) -> Document {
    match value {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Number::PosInt(u),
            (None, Some(i)) => Number::NegInt(i),
            (None, None) => Number::Float(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(document).collect()),
        Value::Object(map) => Document::Object(map.iter().map(|(k, v)| (k.clone(), document(v))).collect()),
    }
}

/// A Smithy document as JSON.
pub(super) fn json(document: &Document) -> Value {
    match document {
        Document::Null => Value::Null,
        Document::Bool(b) => Value::Bool(*b),
        Document::Number(Number::PosInt(u)) => Value::from(*u),
        Document::Number(Number::NegInt(i)) => Value::from(*i),
        Document::Number(Number::Float(f)) => Value::from(*f),
        Document::String(s) => Value::String(s.clone()),
        Document::Array(items) => Value::Array(items.iter().map(json).collect()),
        Document::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), json(v))).collect()),
    }
}

/// The assistant message, keeping the block kinds the contract knows
/// (text, tool use); reasoning, citations and the like are dropped.
pub(super) fn response_message(message: Option<sdk::ConverseOutput>) -> Message {
    let content = match message {
        Some(sdk::ConverseOutput::Message(message)) => message.content.into_iter().filter_map(response_block).collect(),
        _ => Vec::new(),
    };
    Message {
        role: Role::Assistant,
        content,
    }
}

fn response_block(block: sdk::ContentBlock) -> Option<ContentBlock> {
    match block {
        sdk::ContentBlock::Text(text) => Some(ContentBlock::Text(text)),
        sdk::ContentBlock::ToolUse(tool_use) => Some(ContentBlock::ToolUse(ToolUse {
            id: tool_use.tool_use_id,
            name: tool_use.name,
            input: json(&tool_use.input).to_string(),
        })),
        _ => None,
    }
}

/// Bedrock's stop reason in the contract's terms.
pub(super) fn stop_reason(reason: &sdk::StopReason) -> StopReason {
    match reason {
        sdk::StopReason::ToolUse => StopReason::ToolUse,
        sdk::StopReason::MaxTokens | sdk::StopReason::ModelContextWindowExceeded => StopReason::MaxTokens,
        sdk::StopReason::StopSequence => StopReason::StopSequence,
        sdk::StopReason::GuardrailIntervened => StopReason::GuardrailIntervened,
        sdk::StopReason::ContentFiltered => StopReason::ContentFiltered,
        _ => StopReason::EndTurn,
    }
}

/// Token usage; negative counts (never sent by Bedrock) read as zero.
pub(super) fn usage(usage: Option<&sdk::TokenUsage>) -> WitUsage {
    let count = |n: i32| u32::try_from(n).unwrap_or(0);
    usage.map_or(
        WitUsage {
            input_tokens: 0,
            output_tokens: 0,
        },
        |u| WitUsage {
            input_tokens: count(u.input_tokens),
            output_tokens: count(u.output_tokens),
        },
    )
}
