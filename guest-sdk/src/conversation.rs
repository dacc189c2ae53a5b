//! [`Conversation`]: the standard agent loop of model turns and tool calls.

use crate::agent::bindings::wink::agent::types::ToolSpec as WireToolSpec;
use crate::log::{self, Level};
use crate::model::{
    self, ContentBlock, ConverseRequest, ConverseResponse, InferenceConfig, Message, ModelError, Role, StopReason,
    ToolUse, Usage,
};
use crate::{AgentError, ToolError, ToolSpec, tools};

/// A conversation with the model that runs the tools it asks for.
///
/// [`run`](Self::run) repeats: call the model; if the answer requests tools,
/// call each through the host and send all the results back in one user
/// message; until the model answers without requesting a tool.
///
/// ```no_run
/// # use wink_guest::{AgentError, Conversation};
/// # fn demo() -> Result<(), AgentError> {
/// let mut conversation = Conversation::new().system("You are terse.").max_turns(4);
/// conversation.user("What is in notes.txt?");
/// let outcome = conversation.run()?;
/// println!("{} ({} turns)", outcome.text, outcome.turns);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Conversation {
    /// The next request: system prompts, tools, config and the messages so far.
    request: ConverseRequest,
    /// Whether to offer every granted tool, fetched from the host on the first run.
    offer_granted: bool,
    max_turns: u32,
}

/// The result of a successful [`Conversation::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The text of the model's final answer.
    pub text: String,
    /// Model calls made by this run.
    pub turns: u32,
    /// Tokens used by this run, summed over its model calls.
    pub usage: Usage,
    /// Why the model stopped its final answer.
    pub stop_reason: StopReason,
    /// The whole conversation, oldest first, ending with the final answer.
    pub messages: Vec<Message>,
}

impl Default for Conversation {
    fn default() -> Self {
        Self::new()
    }
}

impl Conversation {
    /// Model calls allowed per [`run`](Self::run) unless set with [`max_turns`](Self::max_turns).
    pub const DEFAULT_MAX_TURNS: u32 = 16;

    /// An empty conversation with the job's default model and every granted tool.
    pub fn new() -> Self {
        Self {
            request: ConverseRequest::new(Vec::new()),
            offer_granted: true,
            max_turns: Self::DEFAULT_MAX_TURNS,
        }
    }

    /// Add a system prompt (after those already added).
    pub fn system(mut self, prompt: impl Into<String>) -> Self {
        self.request.system.push(prompt.into());
        self
    }

    /// Use the model or inference profile `id` instead of the job's default.
    pub fn model(mut self, id: impl Into<String>) -> Self {
        self.request.model = Some(id.into());
        self
    }

    /// Offer exactly these tools instead of every granted tool.
    pub fn tools(mut self, tools: Vec<ToolSpec>) -> Self {
        self.request.tools = tools.into_iter().map(WireToolSpec::from).collect();
        self.offer_granted = false;
        self
    }

    /// Offer no tools.
    pub fn without_tools(self) -> Self {
        self.tools(Vec::new())
    }

    /// Sampling parameters for every model call.
    pub fn config(mut self, config: InferenceConfig) -> Self {
        self.request.config = config;
        self
    }

    /// Fail a [`run`](Self::run) that needs more than `max_turns` model calls.
    pub fn max_turns(mut self, max_turns: u32) -> Self {
        self.max_turns = max_turns;
        self
    }

    /// Add user text to the conversation.
    pub fn user(&mut self, text: impl Into<String>) {
        let block = ContentBlock::text(text);
        // Providers reject two user messages in a row: extend the open one.
        match self.request.messages.last_mut() {
            Some(last) if last.role == Role::User => last.content.push(block),
            _ => self.request.messages.push(Message {
                role: Role::User,
                content: vec![block],
            }),
        }
    }

    /// The conversation so far, oldest first.
    pub fn messages(&self) -> &[Message] {
        &self.request.messages
    }

    /// Run model turns and tool calls until the model answers without
    /// requesting a tool.
    ///
    /// A failed tool call is reported to the model, not to the caller. Fails
    /// with [`AgentError::BudgetExceeded`] or [`AgentError::Model`] when a model
    /// call fails, and with [`AgentError::Failed`] when the model still wants
    /// tools after `max_turns` calls (those last tools are not called).
    pub fn run(&mut self) -> Result<Outcome, AgentError> {
        self.run_with(&mut WinkHost)
    }

    fn run_with(&mut self, host: &mut impl Host) -> Result<Outcome, AgentError> {
        if self.offer_granted {
            self.request.tools = host.granted_tools();
            self.offer_granted = false;
        }
        let mut usage = Usage::ZERO;
        for turn in 1..=self.max_turns {
            let response = host.converse(&self.request)?;
            usage += response.usage;
            log_turn(turn, &response);
            let tool_uses: Vec<ToolUse> = response.message.tool_uses().cloned().collect();
            self.request.messages.push(response.message);
            if tool_uses.is_empty() {
                return Ok(self.outcome(turn, usage, response.stop_reason));
            }
            // Calling tools whose results no model call would read is wasted work.
            if turn == self.max_turns {
                break;
            }
            let results = tool_uses.iter().map(|tool_use| call_tool(host, tool_use)).collect();
            self.request.messages.push(Message {
                role: Role::User,
                content: results,
            });
        }
        Err(AgentError::Failed(format!("max turns ({}) reached", self.max_turns)))
    }

    fn outcome(&self, turns: u32, usage: Usage, stop_reason: StopReason) -> Outcome {
        let messages = self.request.messages.clone();
        let text = messages.last().map(Message::text).unwrap_or_default();
        Outcome {
            text,
            turns,
            usage,
            stop_reason,
            messages,
        }
    }
}

/// Runs one requested tool and turns its outcome into a tool-result block.
fn call_tool(host: &mut impl Host, tool_use: &ToolUse) -> ContentBlock {
    let fields = [("tool", tool_use.name.as_str()), ("tool_use_id", tool_use.id.as_str())];
    match host.call_tool(&tool_use.name, &tool_use.input) {
        Ok(output) => {
            log::emit(Level::Debug, "tool call succeeded", &fields);
            ContentBlock::tool_result(&tool_use.id, output)
        }
        Err(err) => {
            let reason = err.to_string();
            log::emit(
                Level::Warn,
                "tool call failed",
                &[fields[0], fields[1], ("error", &reason)],
            );
            ContentBlock::tool_error(&tool_use.id, &reason)
        }
    }
}

fn log_turn(turn: u32, response: &ConverseResponse) {
    let tool_uses = response.message.tool_uses().count();
    log::emit(
        Level::Info,
        "model turn",
        &[
            ("turn", &turn.to_string()),
            ("stop_reason", response.stop_reason.as_str()),
            ("input_tokens", &response.usage.input_tokens.to_string()),
            ("output_tokens", &response.usage.output_tokens.to_string()),
            ("tool_uses", &tool_uses.to_string()),
        ],
    );
}

/// The host calls a conversation makes; a seam so the loop is testable natively.
trait Host {
    fn granted_tools(&mut self) -> Vec<WireToolSpec>;
    fn converse(&mut self, request: &ConverseRequest) -> Result<ConverseResponse, ModelError>;
    fn call_tool(&mut self, name: &str, input: &str) -> Result<String, ToolError>;
}

/// The real host, through the component's imports.
struct WinkHost;

impl Host for WinkHost {
    fn granted_tools(&mut self) -> Vec<WireToolSpec> {
        crate::agent::bindings::wink::agent::tools::granted()
    }

    fn converse(&mut self, request: &ConverseRequest) -> Result<ConverseResponse, ModelError> {
        model::converse(request)
    }

    fn call_tool(&mut self, name: &str, input: &str) -> Result<String, ToolError> {
        tools::call_raw(name, input)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use serde_json::json;

    use super::*;
    use crate::model::ToolResult;

    /// Serves scripted responses and records what the loop sent.
    #[derive(Default)]
    struct FakeHost {
        responses: VecDeque<Result<ConverseResponse, ModelError>>,
        requests: Vec<ConverseRequest>,
        tool_calls: Vec<(String, String)>,
        granted_calls: usize,
    }

    impl FakeHost {
        fn new(responses: impl IntoIterator<Item = Result<ConverseResponse, ModelError>>) -> Self {
            Self {
                responses: responses.into_iter().collect(),
                ..Self::default()
            }
        }
    }

    impl Host for FakeHost {
        fn granted_tools(&mut self) -> Vec<WireToolSpec> {
            self.granted_calls += 1;
            vec![ToolSpec::new("read_file", "Reads a file.", json!({"type": "object"})).into()]
        }

        fn converse(&mut self, request: &ConverseRequest) -> Result<ConverseResponse, ModelError> {
            self.requests.push(request.clone());
            self.responses.pop_front().expect("a scripted response")
        }

        fn call_tool(&mut self, name: &str, input: &str) -> Result<String, ToolError> {
            self.tool_calls.push((name.to_owned(), input.to_owned()));
            match name {
                "read_file" => Ok(r#"{"content":"hello"}"#.to_owned()),
                _ => Err(ToolError::NotFound(name.to_owned())),
            }
        }
    }

    fn usage(input_tokens: u32, output_tokens: u32) -> Usage {
        Usage {
            input_tokens,
            output_tokens,
        }
    }

    fn answer(text: &str) -> Result<ConverseResponse, ModelError> {
        Ok(ConverseResponse {
            message: Message::assistant(text),
            stop_reason: StopReason::EndTurn,
            usage: usage(10, 2),
        })
    }

    fn asks_for(tools: &[&str]) -> Result<ConverseResponse, ModelError> {
        let content = tools
            .iter()
            .enumerate()
            .map(|(i, name)| {
                ContentBlock::ToolUse(ToolUse {
                    id: format!("t{i}"),
                    name: (*name).to_owned(),
                    input: r#"{"path":"notes.txt"}"#.to_owned(),
                })
            })
            .collect();
        Ok(ConverseResponse {
            message: Message {
                role: Role::Assistant,
                content,
            },
            stop_reason: StopReason::ToolUse,
            usage: usage(5, 1),
        })
    }

    fn tool_results(message: &Message) -> Vec<&ToolResult> {
        message
            .content
            .iter()
            .filter_map(|block| match block {
                ContentBlock::ToolResult(result) => Some(result),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn answer_without_tools_ends_after_one_turn() {
        let mut host = FakeHost::new([answer("hello")]);
        let mut conversation = Conversation::new().system("be nice").model("m1");
        conversation.user("hi");

        let outcome = conversation.run_with(&mut host).expect("outcome");

        assert_eq!(outcome.text, "hello");
        assert_eq!(outcome.turns, 1);
        assert_eq!(outcome.usage, usage(10, 2));
        assert_eq!(outcome.stop_reason, StopReason::EndTurn);
        assert_eq!(outcome.messages, [Message::user("hi"), Message::assistant("hello")]);
        let request = &host.requests[0];
        assert_eq!(
            (request.system.as_slice(), request.model.as_deref()),
            (&["be nice".to_owned()][..], Some("m1"))
        );
        assert_eq!(request.tools.len(), 1, "granted tools are offered by default");
    }

    #[test]
    fn tool_results_go_back_in_one_user_message() {
        let mut host = FakeHost::new([asks_for(&["read_file", "missing"]), answer("done")]);
        let mut conversation = Conversation::new();
        conversation.user("read it");

        let outcome = conversation.run_with(&mut host).expect("outcome");

        assert_eq!((outcome.text.as_str(), outcome.turns), ("done", 2));
        assert_eq!(outcome.usage, usage(15, 3));
        assert_eq!(
            host.tool_calls[0],
            ("read_file".to_owned(), r#"{"path":"notes.txt"}"#.to_owned())
        );
        let second = &host.requests[1].messages;
        assert_eq!(second.len(), 3);
        assert_eq!(second[2].role, Role::User);
        let results = tool_results(&second[2]);
        assert_eq!(results.len(), 2);
        assert_eq!((results[0].tool_use_id.as_str(), results[0].is_error), ("t0", false));
        assert_eq!(results[0].content, r#"{"content":"hello"}"#);
        assert_eq!((results[1].tool_use_id.as_str(), results[1].is_error), ("t1", true));
        assert_eq!(results[1].content, r#""tool not found: missing""#);
        assert_eq!(host.granted_calls, 1);
    }

    #[test]
    fn max_turns_fails_without_calling_unread_tools() {
        let mut host = FakeHost::new([asks_for(&["read_file"]), asks_for(&["read_file"])]);
        let mut conversation = Conversation::new().max_turns(2);
        conversation.user("loop");

        let err = conversation.run_with(&mut host).expect_err("too many turns");

        assert_eq!(err, AgentError::Failed("max turns (2) reached".into()));
        assert_eq!(host.tool_calls.len(), 1);
    }

    #[test]
    fn model_errors_end_the_run() {
        let mut host = FakeHost::new([Err(ModelError::BudgetExceeded("turns".into()))]);
        let mut conversation = Conversation::new();
        conversation.user("hi");
        let err = conversation.run_with(&mut host).expect_err("budget");
        assert_eq!(err, AgentError::BudgetExceeded("turns".into()));

        let mut host = FakeHost::new([Err(ModelError::Throttled("slow down".into()))]);
        let err = conversation.run_with(&mut host).expect_err("throttled");
        assert_eq!(err, AgentError::Model("throttled: slow down".into()));
    }

    #[test]
    fn explicit_tools_skip_the_granted_list() {
        let mut host = FakeHost::new([answer("ok")]);
        let mut conversation = Conversation::new().without_tools();
        conversation.user("hi");
        conversation.run_with(&mut host).expect("outcome");
        assert_eq!(host.granted_calls, 0);
        assert!(host.requests[0].tools.is_empty());
    }

    #[test]
    fn consecutive_user_text_shares_one_message() {
        let mut conversation = Conversation::new();
        conversation.user("a");
        conversation.user("b");
        assert_eq!(conversation.messages().len(), 1);
        assert_eq!(conversation.messages()[0].text(), "a\nb");
    }
}
