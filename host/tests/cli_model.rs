//! `wink-host run` with Bedrock and model budgets, as a user runs it: the
//! AWS default credential chain (here: environment variables of the host
//! process) and the endpoint override, against the fake Bedrock server.

mod common;

use std::process::{Command, Output};

use common::*;
use serde_json::{Value, json};
use wink_host::model::bedrock::fake::{FakeBedrock, FakeReply};

const SECRET: &str = "cliSECRETkeyDoNotLeak0123456789abcdefghij";

fn wink_host(args: &[&str], endpoint: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wink-host"))
        .args(args)
        .env("WINK_LOG", "warn")
        .env_remove("WINK_MODEL")
        .env("WINK_BEDROCK_ENDPOINT", endpoint)
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "AKIACLITESTKEY000001")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run wink-host")
}

// Multi-threaded: the fake server keeps serving while this thread waits on the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_from_the_cli_uses_the_default_chain_and_enforces_the_budget() {
    let fake = FakeBedrock::start(FakeReply::text("from bedrock", 10, 5))
        .await
        .expect("fake");
    let adversary = guest("adversary");
    let input = json!({"mode": "models", "count": 3, "prompt": "hi"}).to_string();
    let out = wink_host(
        &[
            "run",
            adversary.to_str().expect("path"),
            "--model",
            "bedrock:us.anthropic.claude-3-5-haiku-20241022-v1:0",
            "--max-turns",
            "2",
            "--max-usd",
            "0.001",
            "--input",
            &input,
        ],
        &fake.endpoint_url(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let value: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(value["texts"], json!(["from bedrock", "from bedrock"]), "{value}");
    assert!(value["error"].to_string().contains("turns: limit 2"), "{value}");
    assert_eq!(value["budget"]["micro_usd"], json!(1000 - 2 * 28));
    assert_eq!(fake.request_count(), 2);
    let auth = &fake.requests()[0].headers;
    assert!(
        auth.iter().any(|(k, v)| k == "authorization"
            && v.contains("AKIACLITESTKEY000001/")
            && v.contains("/eu-west-1/bedrock/")),
        "signed with the environment's credentials for the environment's region: {auth:?}"
    );
    assert!(!stderr.contains(SECRET) && !String::from_utf8_lossy(&out.stdout).contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_outside_the_cli_allowlist_is_not_allowed() {
    let fake = FakeBedrock::start(FakeReply::text("unused", 1, 1)).await.expect("fake");
    let adversary = guest("adversary");
    let input = json!({"mode": "models", "count": 1, "model": "anthropic.claude-3-opus-20240229-v1:0"}).to_string();
    let out = wink_host(
        &[
            "run",
            adversary.to_str().expect("path"),
            "--model",
            "bedrock:anthropic.claude-3-haiku-20240307-v1:0",
            "--allow-model",
            "anthropic.claude-3-haiku-20240307-v1:0",
            "--input",
            &input,
        ],
        &fake.endpoint_url(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let value: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert!(value["error"].to_string().contains("NotAllowed"), "{value}");
    assert_eq!(fake.request_count(), 0);
}
