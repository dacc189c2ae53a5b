//! Assembling a ConverseStream event stream into one Converse response.

use std::collections::BTreeMap;
use std::time::Instant;

use aws_sdk_bedrockruntime::types as sdk;

use super::convert;
use crate::bindings::model::Usage as WitUsage;
use crate::model::{ContentBlock, ConverseResponse, Message, ModelError, Role, StopReason, ToolUse};

/// One content block being assembled, keyed by its `contentBlockIndex`.
#[derive(Debug)]
enum Partial {
    Text(String),
    ToolUse { id: String, name: String, input: String },
}

/// Accumulates stream events; [`Assembler::finish`] yields the response.
#[derive(Debug)]
pub(super) struct Assembler {
    blocks: BTreeMap<i32, Partial>,
    stop_reason: Option<StopReason>,
    usage: Option<WitUsage>,
    started: Instant,
    deltas: u32,
}

impl Assembler {
    pub(super) fn new() -> Self {
        Self {
            blocks: BTreeMap::new(),
            stop_reason: None,
            usage: None,
            started: Instant::now(),
            deltas: 0,
        }
    }

    /// Fold one event in; deltas are logged as they arrive.
    pub(super) fn push(&mut self, event: sdk::ConverseStreamOutput) {
        match event {
            sdk::ConverseStreamOutput::ContentBlockStart(start) => {
                if let Some(sdk::ContentBlockStart::ToolUse(tool)) = start.start {
                    self.blocks.insert(
                        start.content_block_index,
                        Partial::ToolUse {
                            id: tool.tool_use_id,
                            name: tool.name,
                            input: String::new(),
                        },
                    );
                }
            }
            sdk::ConverseStreamOutput::ContentBlockDelta(delta) => {
                if let Some(delta_body) = delta.delta {
                    self.delta(delta.content_block_index, delta_body);
                }
            }
            sdk::ConverseStreamOutput::MessageStop(stop) => {
                self.stop_reason = Some(convert::stop_reason(&stop.stop_reason))
            }
            sdk::ConverseStreamOutput::Metadata(metadata) => self.usage = Some(convert::usage(metadata.usage.as_ref())),
            _ => {}
        }
    }

    fn delta(&mut self, index: i32, delta: sdk::ContentBlockDelta) {
        self.deltas += 1;
        if self.deltas == 1 {
            tracing::debug!(
                first_delta_ms = self.started.elapsed().as_millis() as u64,
                "model stream started"
            );
        }
        match (
            self.blocks.entry(index).or_insert_with(|| Partial::Text(String::new())),
            delta,
        ) {
            (Partial::Text(text), sdk::ContentBlockDelta::Text(more)) => {
                tracing::trace!(index, bytes = more.len(), "model text delta");
                text.push_str(&more);
            }
            (Partial::ToolUse { input, .. }, sdk::ContentBlockDelta::ToolUse(more)) => {
                tracing::trace!(index, bytes = more.input.len(), "model tool input delta");
                input.push_str(&more.input);
            }
            // Reasoning, citations and mismatched deltas are not part of the contract.
            _ => {}
        }
    }

    /// The assembled response; a stream that ended without `messageStop` is
    /// a provider error rather than a silently truncated answer.
    pub(super) fn finish(self) -> Result<ConverseResponse, ModelError> {
        let stop_reason = self
            .stop_reason
            .ok_or_else(|| ModelError::Provider("the model stream ended before messageStop".into()))?;
        tracing::debug!(
            deltas = self.deltas,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "model stream finished"
        );
        let cut_off = stop_reason == StopReason::MaxTokens;
        let content = self
            .blocks
            .into_values()
            .filter_map(|block| finish_block(block, cut_off).transpose())
            .collect::<Result<_, _>>()?;
        Ok(ConverseResponse {
            message: Message {
                role: Role::Assistant,
                content,
            },
            stop_reason,
            usage: self.usage.unwrap_or(WitUsage {
                input_tokens: 0,
                output_tokens: 0,
            }),
        })
    }
}

/// The finished block; none for a tool request that `max_tokens` cut off
/// (`cut_off`) before its input was whole. That answer was paid for and
/// says why it stopped; asking again would be cut off the same way, and
/// paid for again.
fn finish_block(block: Partial, cut_off: bool) -> Result<Option<ContentBlock>, ModelError> {
    Ok(Some(match block {
        Partial::Text(text) => ContentBlock::Text(text),
        Partial::ToolUse { id, name, input } => {
            // An empty input stream means a tool without parameters.
            let input = if input.is_empty() { "{}".to_owned() } else { input };
            match serde_json::from_str::<serde::de::IgnoredAny>(&input) {
                Ok(_) => ContentBlock::ToolUse(ToolUse { id, name, input }),
                Err(_) if cut_off => {
                    tracing::debug!(tool_use = %id, tool = %name, "a tool request cut off by max-tokens is dropped");
                    return Ok(None);
                }
                Err(err) => {
                    return Err(ModelError::Provider(format!(
                        "the model streamed invalid JSON for tool-use {id}: {err}"
                    )));
                }
            }
        }
    }))
}
