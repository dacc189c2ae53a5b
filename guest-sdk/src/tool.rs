//! The `tool` world: the [`Tool`] trait and [`export_tool!`](crate::export_tool).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{ToolError, ToolSpec};

/// Raw bindings generated from `wit/wink.wit`, world `tool`. Use the SDK's
/// wrappers instead; this is public only for [`export_tool!`](crate::export_tool).
#[doc(hidden)]
// The generated glue is the FFI layer: it must read and write raw guest memory.
#[allow(unsafe_code, missing_docs, clippy::all, clippy::unwrap_used)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "tool",
        pub_export_macro: true,
        export_macro_name: "__export_tool_world",
        default_bindings_module: "wink_guest::tool::bindings",
    });
}

impl_wire_conversions!(bindings::wink::agent::types);

/// A tool: one function with a JSON schema, run in a fresh sandbox per call.
///
/// Implement it on a unit struct and export it with
/// [`export_tool!`](crate::export_tool).
pub trait Tool {
    /// The input, deserialized from the call's JSON object.
    type Input: DeserializeOwned;
    /// The output, serialized to JSON for the caller.
    type Output: Serialize;

    /// The tool's description for the model.
    fn spec() -> ToolSpec;

    /// Run the tool on one input.
    fn invoke(input: Self::Input) -> Result<Self::Output, ToolError>;
}

/// Runs `T` on JSON text: parses the input, serializes the output.
fn invoke_json<T: Tool>(input: &str) -> Result<String, ToolError> {
    let input = serde_json::from_str(input).map_err(|err| ToolError::InvalidInput(err.to_string()))?;
    let output = T::invoke(input)?;
    serde_json::to_string(&output).map_err(|err| ToolError::Failed(format!("cannot serialize the output: {err}")))
}

/// Adapts a [`Tool`] to the generated `Guest` trait; named by
/// [`export_tool!`](crate::export_tool).
#[doc(hidden)]
pub struct ToolExport<T>(std::marker::PhantomData<T>);

impl<T: Tool> bindings::Guest for ToolExport<T> {
    fn spec() -> bindings::ToolSpec {
        T::spec().into()
    }

    fn invoke(input: String) -> Result<String, bindings::ToolError> {
        invoke_json::<T>(&input).map_err(Into::into)
    }
}

/// Exports a type implementing [`Tool`] as the component's `spec` and
/// `invoke` functions.
///
/// Use it once, at the root of the tool's crate.
#[macro_export]
macro_rules! export_tool {
    ($tool:ty) => {
        const _: () = {
            // The generated export macro only accepts an identifier.
            type WinkToolExport = $crate::tool::ToolExport<$tool>;
            $crate::tool::bindings::__export_tool_world!(
                WinkToolExport with_types_in $crate::tool::bindings
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    struct Add;

    #[derive(Deserialize)]
    struct Operands {
        a: i64,
        b: i64,
    }

    impl Tool for Add {
        type Input = Operands;
        type Output = serde_json::Value;

        fn spec() -> ToolSpec {
            ToolSpec::new("add", "Adds two integers.", json!({"type": "object"}))
        }

        fn invoke(input: Operands) -> Result<serde_json::Value, ToolError> {
            let sum = input
                .a
                .checked_add(input.b)
                .ok_or_else(|| ToolError::Failed("overflow".into()))?;
            Ok(json!({ "sum": sum }))
        }
    }

    #[test]
    fn invoke_json_round_trips() {
        assert_eq!(invoke_json::<Add>(r#"{"a":2,"b":3}"#), Ok(r#"{"sum":5}"#.to_owned()));
    }

    #[test]
    fn bad_input_is_invalid_input_with_serde_message() {
        let Err(ToolError::InvalidInput(reason)) = invoke_json::<Add>(r#"{"a":2}"#) else {
            panic!("expected invalid input");
        };
        assert!(reason.starts_with("missing field `b`"), "{reason}");
    }

    #[test]
    fn tool_errors_pass_through() {
        let input = format!(r#"{{"a":{},"b":1}}"#, i64::MAX);
        assert_eq!(invoke_json::<Add>(&input), Err(ToolError::Failed("overflow".into())));
    }

    #[test]
    fn spec_schema_is_serialized() {
        let spec: bindings::ToolSpec = Add::spec().into();
        assert_eq!(spec.input_schema, r#"{"type":"object"}"#);
        assert_eq!(ToolSpec::from(spec), Add::spec());
    }
}
