//! Minimal test agent for the host's instantiate benchmark: returns
//! `{"ok": true, "echo": <input>}` without calling the model.

use serde_json::{Value, json};
use wink_guest::{Agent, AgentError, Job};

struct Trivial;

impl Agent for Trivial {
    fn run(job: Job) -> Result<Value, AgentError> {
        Ok(json!({ "ok": true, "echo": job.input }))
    }
}

wink_guest::export_agent!(Trivial);
