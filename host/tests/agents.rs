//! The example agents, end to end: model calls through the host, the
//! conversation loop, tools in their own sandboxes, sessions.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::json;
use wink_host::job::JobError;
use wink_host::runtime::Limits;
use wink_host::tools::ToolSet;

fn examples() -> std::path::PathBuf {
    repo_root().join("examples")
}

async fn with_read_file(
    runtime: &wink_host::runtime::Runtime,
    mut env: wink_host::runtime::JobEnv,
) -> wink_host::runtime::JobEnv {
    let tool = runtime
        .load_tool(&guest("read_file"), Limits::default())
        .await
        .expect("tool");
    env.tools = Arc::new(ToolSet::new([tool]).expect("tool set"));
    env
}

#[tokio::test]
async fn hello_makes_one_model_call_and_returns_its_text() {
    let runtime = runtime();
    let agent = load(&runtime, "hello").await;
    let report = run(&runtime, &agent, r#"{"prompt": "hi there"}"#, env()).await;
    assert_eq!(report.stats.model_calls, 1);
    let out = output(report);
    assert_eq!(out["text"], json!("echo: hi there"));
}

#[tokio::test]
async fn file_digest_reads_the_workspace_calls_a_tool_and_loops() {
    let runtime = runtime();
    let agent = load(&runtime, "file-digest").await;
    let script = std::fs::read_to_string(examples().join("file-digest/script.json")).expect("script");
    let env = with_workspace(env_with(scripted(&script)), &examples().join("file-digest/workspace"));
    let env = with_read_file(&runtime, env).await;
    let report = run(&runtime, &agent, r#"{"question": "What is here?"}"#, env).await;
    assert_eq!(report.stats.model_calls, 2, "{:?}", report.outcome);
    assert_eq!(report.stats.tool_calls, 1);
    let out = output(report);
    assert_eq!(out["turns"], json!(2));
    assert_eq!(out["files"], json!(["notes.txt", "todo.md"]));
    assert!(out["answer"].as_str().is_some_and(|a| !a.is_empty()));
}

#[tokio::test]
async fn tool_calls_run_sandboxed_and_report_denials_as_tool_errors() {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("a.txt"), "alpha").expect("write");
    let env = with_read_file(&runtime, with_workspace(env(), root.path())).await;

    let call = |input: serde_json::Value| json!({"mode": "tool", "name": "read_file", "input": input}).to_string();
    let ok = output(run(&runtime, &agent, &call(json!({"path": "a.txt"})), env.clone()).await);
    assert_eq!(ok["ok"]["content"], json!("alpha"), "{ok}");

    let denied = output(run(&runtime, &agent, &call(json!({"path": "../etc/passwd"})), env.clone()).await);
    assert!(denied["error"].to_string().contains("enied"), "{denied}");

    let missing = json!({"mode": "tool", "name": "rm_rf", "input": {}}).to_string();
    let missing = output(run(&runtime, &agent, &missing, env).await);
    assert!(missing["error"].to_string().contains("rm_rf"), "{missing}");
}

#[tokio::test]
async fn a_model_script_that_runs_out_is_a_clear_agent_error() {
    let runtime = runtime();
    let agent = load(&runtime, "hello").await;
    let env = env_with(scripted(r#"{"responses": []}"#));
    let report = run(&runtime, &agent, "{}", env).await;
    match report.outcome {
        Err(JobError::Agent { message, .. }) => assert!(message.contains("exhausted"), "{message}"),
        other => panic!("expected an agent error, got {other:?}"),
    }
}

#[tokio::test]
async fn session_values_round_trip_through_a_checkpoint() {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let env = env();
    let out = output(run(&runtime, &agent, r#"{"mode": "session", "value": "kept"}"#, env.clone()).await);
    assert_eq!(out["value"], json!("kept"));
    let stored = env.sessions.load("test").await;
    assert_eq!(stored.get("k"), Some(&b"kept"[..]), "checkpoint must reach the store");
}
