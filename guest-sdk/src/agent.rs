//! The `agent` world: the [`Agent`] trait, [`Job`] and [`export_agent!`](crate::export_agent).

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::AgentError;

/// Raw bindings generated from `wit/wink.wit`, world `agent`. Use the SDK's
/// wrappers instead; this is public only for [`export_agent!`](crate::export_agent).
#[doc(hidden)]
// The generated glue is the FFI layer: it must read and write raw guest memory.
#[allow(unsafe_code, missing_docs, clippy::all, clippy::unwrap_used)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "agent",
        pub_export_macro: true,
        export_macro_name: "__export_agent_world",
        default_bindings_module: "wink_guest::agent::bindings",
        additional_derives: [PartialEq],
    });
}

impl_wire_conversions!(bindings::wink::agent::types);

/// An agent: turns one [`Job`] into JSON output.
///
/// Implement it on a unit struct and export it with
/// [`export_agent!`](crate::export_agent).
pub trait Agent {
    /// Run the job to completion and return its output.
    fn run(job: Job) -> Result<Value, AgentError>;
}

/// One unit of work handed to an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Idempotency key chosen by the caller; stable across redeliveries.
    pub request_id: String,
    /// Identifier of this job inside the host.
    pub job_id: String,
    /// Delivery attempt, starting at 1.
    pub attempt: u32,
    /// The caller's input.
    pub input: Value,
}

impl Job {
    /// The input deserialized as `T`, or [`AgentError::InvalidInput`] with
    /// serde's explanation.
    ///
    /// Use `Option<T>` to accept a `null` input as well.
    pub fn input_as<T: DeserializeOwned>(&self) -> Result<T, AgentError> {
        T::deserialize(&self.input).map_err(|err| AgentError::InvalidInput(err.to_string()))
    }
}

impl TryFrom<bindings::Job> for Job {
    type Error = AgentError;

    fn try_from(job: bindings::Job) -> Result<Self, AgentError> {
        let input = serde_json::from_str(&job.input)
            .map_err(|err| AgentError::InvalidInput(format!("input is not valid JSON: {err}")))?;
        Ok(Self {
            request_id: job.request_id,
            job_id: job.job_id,
            attempt: job.attempt,
            input,
        })
    }
}

impl From<AgentError> for bindings::AgentError {
    fn from(err: AgentError) -> Self {
        match err {
            AgentError::InvalidInput(reason) => Self::InvalidInput(reason),
            AgentError::Model(reason) => Self::Model(reason),
            AgentError::BudgetExceeded(reason) => Self::BudgetExceeded(reason),
            AgentError::Failed(reason) => Self::Failed(reason),
        }
    }
}

/// Runs `A` on a raw job: parses the input, serializes the output.
fn run_json<A: Agent>(job: bindings::Job) -> Result<String, AgentError> {
    let output = A::run(Job::try_from(job)?)?;
    Ok(output.to_string())
}

/// Adapts an [`Agent`] to the generated `Guest` trait; named by
/// [`export_agent!`](crate::export_agent).
#[doc(hidden)]
pub struct AgentExport<A>(std::marker::PhantomData<A>);

impl<A: Agent> bindings::Guest for AgentExport<A> {
    fn run(job: bindings::Job) -> Result<String, bindings::AgentError> {
        run_json::<A>(job).map_err(Into::into)
    }
}

/// Exports a type implementing [`Agent`] as the component's `run` function.
///
/// Use it once, at the root of the agent's crate.
#[macro_export]
macro_rules! export_agent {
    ($agent:ty) => {
        const _: () = {
            // The generated export macro only accepts an identifier.
            type WinkAgentExport = $crate::agent::AgentExport<$agent>;
            $crate::agent::bindings::__export_agent_world!(
                WinkAgentExport with_types_in $crate::agent::bindings
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    fn job(input: &str) -> bindings::Job {
        bindings::Job {
            request_id: "r".into(),
            job_id: "j".into(),
            attempt: 1,
            input: input.into(),
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Greeting {
        name: String,
    }

    #[test]
    fn input_as_deserializes() {
        let job = Job::try_from(job(r#"{"name":"ada"}"#)).expect("valid job");
        assert_eq!(job.input_as::<Greeting>(), Ok(Greeting { name: "ada".into() }));
    }

    #[test]
    fn input_as_reports_serde_message() {
        let job = Job::try_from(job(r#"{"name":7}"#)).expect("valid job");
        let Err(AgentError::InvalidInput(reason)) = job.input_as::<Greeting>() else {
            panic!("expected invalid input");
        };
        assert!(reason.contains("invalid type: integer `7`"), "{reason}");
    }

    #[test]
    fn input_as_option_accepts_null() {
        let job = Job::try_from(job("null")).expect("valid job");
        assert_eq!(job.input_as::<Option<Greeting>>(), Ok(None));
    }

    #[test]
    fn malformed_input_is_invalid_input() {
        let err = Job::try_from(job("{")).expect_err("malformed");
        assert!(matches!(err, AgentError::InvalidInput(reason) if reason.starts_with("input is not valid JSON")));
    }

    struct Echo;

    impl Agent for Echo {
        fn run(job: Job) -> Result<Value, AgentError> {
            match job.input {
                Value::Null => Err(AgentError::Failed("nothing to echo".into())),
                input => Ok(json!({ "echo": input, "attempt": job.attempt })),
            }
        }
    }

    #[test]
    fn run_json_serializes_output() {
        assert_eq!(
            run_json::<Echo>(job("[1]")),
            Ok(r#"{"attempt":1,"echo":[1]}"#.to_owned())
        );
    }

    #[test]
    fn run_json_passes_errors_through() {
        assert_eq!(
            run_json::<Echo>(job("null")),
            Err(AgentError::Failed("nothing to echo".into()))
        );
    }
}
