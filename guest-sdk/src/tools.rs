//! The tools granted to this agent. Each call runs in a fresh sandboxed
//! instance of the tool's component.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::agent::bindings::wink::agent::tools as wire;
use crate::{ToolError, ToolSpec};

/// Specs of every tool the policy grants to this agent.
pub fn granted() -> Vec<ToolSpec> {
    wire::granted().into_iter().map(ToolSpec::from).collect()
}

/// Call the tool `name` with a JSON input; returns its JSON output.
pub fn call(name: &str, input: &Value) -> Result<Value, ToolError> {
    call_typed(name, input)
}

/// Call the tool `name`, serializing `input` and deserializing its output.
///
/// Output that does not match `O` is reported as [`ToolError::Failed`].
pub fn call_typed<I: Serialize, O: DeserializeOwned>(name: &str, input: &I) -> Result<O, ToolError> {
    let input = serde_json::to_string(input).map_err(|err| ToolError::InvalidInput(err.to_string()))?;
    let output = call_raw(name, &input)?;
    serde_json::from_str(&output)
        .map_err(|err| ToolError::Failed(format!("unexpected output from tool `{name}`: {err}")))
}

/// Call the tool `name` with JSON text; returns its JSON text output as is.
pub fn call_raw(name: &str, input: &str) -> Result<String, ToolError> {
    wire::call(name, input).map_err(ToolError::from)
}
