//! Example agent: one model call that says hello.
//!
//! Input: `{"prompt"?: string}` (default "Say hello to the world.").
//! Output: `{"text": string, "usage": {"input_tokens": n, "output_tokens": n}}`.

use serde::Deserialize;
use serde_json::{Value, json};
use wink_guest::model::{self, ConverseRequest, Message};
use wink_guest::{Agent, AgentError, Job};

const DEFAULT_PROMPT: &str = "Say hello to the world.";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    prompt: Option<String>,
}

struct Hello;

impl Agent for Hello {
    fn run(job: Job) -> Result<Value, AgentError> {
        // A null input means "all defaults", like `{}`.
        let prompt = job
            .input_as::<Option<Input>>()?
            .and_then(|input| input.prompt)
            .unwrap_or_else(|| DEFAULT_PROMPT.to_owned());
        let response = model::converse(&ConverseRequest::new(vec![Message::user(prompt)]))?;
        Ok(json!({
            "text": response.message.text(),
            "usage": {
                "input_tokens": response.usage.input_tokens,
                "output_tokens": response.usage.output_tokens,
            },
        }))
    }
}

wink_guest::export_agent!(Hello);
