//! The `wink-host` binary as a user runs it.

mod common;

use std::process::{Command, Output};

use common::*;

fn wink_host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wink-host"))
        .args(args)
        .env("WINK_LOG", "warn")
        .env_remove("WINK_MODEL")
        .output()
        .expect("run wink-host")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn run_prints_the_output_json_on_stdout() {
    let hello = guest("hello");
    let script = repo_root().join("examples/hello/script.json");
    let model = format!("scripted:{}", script.display());
    let out = wink_host(&["run", hello.to_str().expect("path"), "--model", &model, "--input", "{}"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert!(value["text"].as_str().is_some_and(|t| !t.is_empty()), "{value}");
}

#[test]
fn run_works_with_no_model_configured() {
    let hello = guest("hello");
    let out = wink_host(&["run", hello.to_str().expect("path"), "--input", r#"{"prompt":"ping"}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(value["text"], "echo: ping");
}

#[test]
fn failures_exit_non_zero_with_a_one_line_reason() {
    let adversary = guest("adversary");
    let path = adversary.to_str().expect("path");
    let cases: [(&[&str], &str); 4] = [
        (&["run", path, "--input", "{oops"], "--input is not valid JSON"),
        (&["run", "/no/such.wasm"], "/no/such.wasm"),
        (&["run", path, "--model", "gpt:4"], "invalid model spec \"gpt:4\""),
        (
            &["run", path, "--fuel", "1000000", "--input", r#"{"mode":"spin"}"#],
            "fuel limit exceeded (1000000 fuel)",
        ),
    ];
    for (args, expected) in cases {
        let out = wink_host(args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
        let err = stderr(&out);
        let reason = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_default();
        assert!(reason.contains(expected), "{args:?}: expected {expected:?} in {err}");
    }
}

#[test]
fn help_documents_every_run_flag() {
    let out = wink_host(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--input",
        "--workspace",
        "--model",
        "--tool",
        "--fuel",
        "--timeout",
        "--memory",
        "--max-output",
        "--cache-dir",
        "--no-cache",
        "WINK_MODEL",
        "WINK_CACHE_DIR",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn secrets_are_redacted_from_everything_printed_on_stderr() {
    let secret_path = "/nonexistent/AKIAIOSFODNN7EXAMPLE/agent.wasm";
    let out = Command::new(env!("CARGO_BIN_EXE_wink-host"))
        .args(["run", secret_path])
        .env("WINK_LOG", "debug")
        .output()
        .expect("run wink-host");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/[REDACTED]/agent.wasm"), "{err}");
    assert!(!err.contains("AKIAIOSFODNN7EXAMPLE"), "{err}");
}

#[test]
fn an_invalid_redaction_pattern_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_wink-host"))
        .args(["run", "agent.wasm"])
        .env("WINK_REDACT_PATTERNS", "(unclosed")
        .output()
        .expect("run wink-host");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with("error: invalid redaction pattern \"(unclosed\""),
        "{err}"
    );
}
