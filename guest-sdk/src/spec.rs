//! [`ToolSpec`], the description of a tool shown to the model.

use serde_json::Value;

/// The description of a tool, as shown to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Unique name the model uses to request the tool (`[a-zA-Z0-9_-]{1,64}`).
    pub name: String,
    /// What the tool does and when to use it, for the model.
    pub description: String,
    /// JSON Schema (draft 2020-12) of the tool's input object.
    pub input_schema: Value,
}

impl ToolSpec {
    /// A spec from its three parts.
    pub fn new(name: impl Into<String>, description: impl Into<String>, input_schema: Value) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            input_schema,
        }
    }
}

/// Implements the conversions between the SDK's [`ToolSpec`] and
/// [`ToolError`](crate::ToolError) and the generated `types` module of one
/// world. Each world generates its own copy of those types, hence a macro.
#[cfg(any(feature = "agent", feature = "tool"))]
macro_rules! impl_wire_conversions {
    ($types:path) => {
        use $types as wire_types;

        impl From<crate::ToolSpec> for wire_types::ToolSpec {
            fn from(spec: crate::ToolSpec) -> Self {
                Self {
                    name: spec.name,
                    description: spec.description,
                    input_schema: spec.input_schema.to_string(),
                }
            }
        }

        impl From<wire_types::ToolSpec> for crate::ToolSpec {
            fn from(spec: wire_types::ToolSpec) -> Self {
                // The host validates schemas before granting a tool; should one
                // still be malformed, keep its text rather than lose it.
                let input_schema =
                    serde_json::from_str(&spec.input_schema).unwrap_or(serde_json::Value::String(spec.input_schema));
                Self {
                    name: spec.name,
                    description: spec.description,
                    input_schema,
                }
            }
        }

        impl From<crate::ToolError> for wire_types::ToolError {
            fn from(err: crate::ToolError) -> Self {
                use crate::ToolError as E;
                match err {
                    E::NotFound(reason) => Self::NotFound(reason),
                    E::Denied(reason) => Self::Denied(reason),
                    E::InvalidInput(reason) => Self::InvalidInput(reason),
                    E::LimitExceeded(reason) => Self::LimitExceeded(reason),
                    E::Failed(reason) => Self::Failed(reason),
                }
            }
        }

        impl From<wire_types::ToolError> for crate::ToolError {
            fn from(err: wire_types::ToolError) -> Self {
                use wire_types::ToolError as E;
                match err {
                    E::NotFound(reason) => Self::NotFound(reason),
                    E::Denied(reason) => Self::Denied(reason),
                    E::InvalidInput(reason) => Self::InvalidInput(reason),
                    E::LimitExceeded(reason) => Self::LimitExceeded(reason),
                    E::Failed(reason) => Self::Failed(reason),
                }
            }
        }
    };
}
