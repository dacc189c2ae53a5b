//! `wink-host policy check` and `wink-host run --policy` as a user runs them.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn wink_host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wink-host"))
        .args(args)
        .env("WINK_LOG", "warn")
        .env_remove("WINK_MODEL")
        .env_remove("WINK_POLICY")
        .output()
        .expect("run wink-host")
}

fn last_stderr_line(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.lines().last().unwrap_or_default().to_owned()
}

fn write_policy(dir: &Path, text: &str) -> String {
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).expect("write policy");
    path.display().to_string()
}

const POLICY: &str = r#"
[agents.file-digest]
tools = ["read_file"]
[tools.read_file]
fs = [{ path = ".", access = "read-only" }]
limits = { fuel = 1_000_000_000, memory = "32MiB" }
"#;

#[test]
fn policy_check_prints_the_effective_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = write_policy(dir.path(), POLICY);
    let out = wink_host(&["policy", "check", &policy, "--agent", "file-digest"]);
    assert!(out.status.success(), "{}", last_stderr_line(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let limits = &value["tools"]["read_file"]["limits"];
    assert_eq!(limits["memory"], 32 << 20, "{value}");
    assert_eq!(limits["timeout"], "300000ms", "defaults are filled in: {value}");
}

#[test]
fn policy_check_names_an_unknown_key_and_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = write_policy(dir.path(), "[tools.read_file]\nfs = []\nenvv = [\"HOME\"]\n");
    let out = wink_host(&["policy", "check", &policy]);
    assert!(!out.status.success());
    let line = last_stderr_line(&out);
    assert!(line.contains("policy.toml:3:1: unknown field `envv`"), "{line}");
}

#[test]
fn run_refuses_a_tool_the_policy_does_not_grant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = write_policy(dir.path(), "[agents.file-digest]\ntools = []\n");
    let agent = guest("file-digest");
    let tool = guest("read_file");
    let args = [
        "run",
        agent.to_str().expect("path"),
        "--tool",
        tool.to_str().expect("path"),
        "--policy",
        &policy,
        "--no-cache",
    ];
    let out = wink_host(&args);
    assert!(!out.status.success());
    let line = last_stderr_line(&out);
    assert!(
        line.contains("tool \"read_file\" is not granted to agent \"file-digest\" by the policy"),
        "{line}"
    );
}

#[test]
fn run_under_a_policy_gives_granted_tools_their_grants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = write_policy(dir.path(), POLICY);
    let agent = guest("file-digest");
    let tool = guest("read_file");
    let workspace = repo_root().join("examples/file-digest/workspace");
    let script = format!(
        "scripted:{}",
        repo_root().join("examples/file-digest/script.json").display()
    );
    let args = [
        "run",
        agent.to_str().expect("path"),
        "--tool",
        tool.to_str().expect("path"),
        "--policy",
        &policy,
        "--workspace",
        workspace.to_str().expect("path"),
        "--model",
        &script,
        "--input",
        r#"{"question": "What is here?"}"#,
        "--no-cache",
    ];
    let out = wink_host(&args);
    assert!(out.status.success(), "{}", last_stderr_line(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(value["turns"], 2, "{value}");
}
