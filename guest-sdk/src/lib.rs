//! Guest SDK for [wink-host]: write agents and tools in Rust and build them
//! as WASI 0.2 components (`wasm32-wasip2`).
//!
//! An **agent** (feature `agent`) receives a [`Job`] and returns JSON; it
//! reaches the outside world only through the host: [`model`] inference, the
//! granted [`tools`], the durable [`session`] and [`log`]. [`Conversation`]
//! runs the usual model-and-tools loop. The job's workspace is readable with
//! `std::fs` under `/workspace`.
//!
//! A **tool** (feature `tool`) is one function with a JSON schema, run in a
//! fresh sandbox for every call.
//!
//! A crate is either an agent or a tool: enabling both features fails to
//! compile for wasm32.
//!
//! [wink-host]: https://example.invalid/wink-host
//!
//! # An agent
//!
//! ```no_run
//! # #[cfg(feature = "agent")] mod doc {
//! use serde_json::{Value, json};
//! use wink_guest::{Agent, AgentError, Conversation, Job};
//!
//! struct Answerer;
//!
//! impl Agent for Answerer {
//!     fn run(job: Job) -> Result<Value, AgentError> {
//!         let question: String = job.input_as()?;
//!         let mut conversation = Conversation::new().system("Answer in one sentence.");
//!         conversation.user(question);
//!         Ok(json!({ "answer": conversation.run()?.text }))
//!     }
//! }
//!
//! wink_guest::export_agent!(Answerer);
//! # }
//! ```
//!
//! # A tool
//!
//! ```no_run
//! # #[cfg(feature = "tool")] mod doc {
//! use serde_json::{Value, json};
//! use wink_guest::{Tool, ToolError, ToolSpec};
//!
//! struct WordCount;
//!
//! impl Tool for WordCount {
//!     type Input = String;
//!     type Output = Value;
//!
//!     fn spec() -> ToolSpec {
//!         ToolSpec::new("word_count", "Counts the words of a text.", json!({ "type": "string" }))
//!     }
//!
//!     fn invoke(text: String) -> Result<Value, ToolError> {
//!         Ok(json!({ "words": text.split_whitespace().count() }))
//!     }
//! }
//!
//! wink_guest::export_tool!(WordCount);
//! # }
//! ```

// A component implements one world; linking both worlds' bindings into one
// module would produce a component that is neither an agent nor a tool.
#[cfg(all(target_arch = "wasm32", feature = "agent", feature = "tool"))]
compile_error!("wink-guest: enable either the `agent` or the `tool` feature, not both, when building a component");

#[macro_use]
mod spec;
mod error;

#[cfg(any(feature = "agent", feature = "tool"))]
pub mod log;

#[cfg(feature = "agent")]
pub mod agent;
#[cfg(feature = "agent")]
mod conversation;
#[cfg(feature = "agent")]
pub mod model;
#[cfg(feature = "agent")]
pub mod session;
#[cfg(feature = "agent")]
pub mod tools;

#[cfg(feature = "tool")]
pub mod tool;
#[cfg(feature = "tool")]
pub mod workspace;

#[cfg(feature = "agent")]
pub use agent::{Agent, Job};
#[cfg(feature = "agent")]
pub use conversation::{Conversation, Outcome};
pub use error::{AgentError, ToolError};
pub use spec::ToolSpec;
#[cfg(feature = "tool")]
pub use tool::Tool;
