//! `wink-host run` with Bedrock and model budgets, as a user runs it: the
//! AWS default credential chain (here: environment variables of the host
//! process), the endpoint override, the configuration file and the policy
//! file, against the fake Bedrock server.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use wink_host::model::bedrock::fake::{FakeBedrock, FakeReply, Step};

const SECRET: &str = "cliSECRETkeyDoNotLeak0123456789abcdefghij";
const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";

fn wink_host(args: &[&str], endpoint: &str) -> Output {
    wink_host_with(args, &[("WINK_BEDROCK_ENDPOINT", endpoint)])
}

/// `wink-host` with AWS credentials in its environment, no `WINK_*` setting
/// inherited from the test's, and `env` added.
fn wink_host_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    wink_host_command(args, env).output().expect("run wink-host")
}

fn wink_host_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wink-host"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("WINK_")) {
        command.env_remove(name);
    }
    command
        .args(args)
        .env("WINK_LOG", "warn")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "AKIACLITESTKEY000001")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied());
    command
}

/// The adversary guest's `models` mode: `count` calls, then what is left.
fn models_input(count: u32, model: Option<&str>) -> String {
    json!({"mode": "models", "count": count, "prompt": "hi", "model": model}).to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

fn stdout_json(out: &Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// The run failed with exactly one line on stderr; that line.
fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_sets_model_bedrock_guardrail_budget_and_prices() {
    let fake = FakeBedrock::start(FakeReply::text("configured", 1000, 1000))
        .await
        .expect("fake");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(
        dir.path(),
        "wink.toml",
        &format!(
            r#"
[model]
default = "bedrock:{HAIKU}"

[bedrock]
endpoint_url = "{}"
region = "us-west-2"

[bedrock.guardrail]
identifier = "gr0abc"
version = "DRAFT"
trace = true

[budget]
max_turns = 2

[prices]
"anthropic.claude-3-haiku" = {{ input_usd_per_mtok = 1.0, output_usd_per_mtok = 2.0 }}
"#,
            fake.endpoint_url()
        ),
    );
    let adversary = guest("adversary");
    let input = models_input(3, None);
    let out = wink_host_with(
        &[
            "run",
            adversary.to_str().expect("path"),
            "--config",
            &config,
            "--max-usd",
            "1",
            "--input",
            &input,
        ],
        &[],
    );
    let value = stdout_json(&out);
    assert_eq!(value["texts"], json!(["configured", "configured"]), "{value}");
    assert!(value["error"].to_string().contains("turns: limit 2"), "{value}");
    // 1000 input tokens at $1/Mtok plus 1000 output tokens at $2/Mtok, twice.
    assert_eq!(value["budget"]["micro_usd"], json!(1_000_000 - 2 * 3000), "{value}");
    assert_eq!(fake.request_count(), 2);
    let request = &fake.requests()[0];
    assert_eq!(request.model_id, HAIKU);
    assert_eq!(
        request.body["guardrailConfig"],
        json!({"guardrailIdentifier": "gr0abc", "guardrailVersion": "DRAFT", "trace": "enabled"}),
        "{}",
        request.body
    );
    assert!(
        request
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && v.contains("/us-west-2/bedrock/")),
        "the config's region beats AWS_REGION"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_beat_environment_variables_which_beat_the_config_file() {
    let fake = FakeBedrock::start(FakeReply::text("ok", 1, 1)).await.expect("fake");
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens on the discard port: if the file's endpoint were used, every call would fail.
    let config = write(
        dir.path(),
        "wink.toml",
        r#"
[model]
default = "echo"
[bedrock]
endpoint_url = "http://127.0.0.1:9"
[bedrock.guardrail]
identifier = "gr0abc"
version = "1"
[budget]
max_turns = 1
"#,
    );
    let adversary = guest("adversary");
    let input = models_input(3, None);
    let out = wink_host_with(
        &[
            "run",
            adversary.to_str().expect("path"),
            "--input",
            &input,
            "--bedrock-guardrail-version",
            "3",
            "--max-turns",
            "2",
        ],
        &[
            ("WINK_CONFIG", &config),
            ("WINK_MODEL", &format!("bedrock:{HAIKU}")),
            ("WINK_BEDROCK_ENDPOINT", &fake.endpoint_url()),
            ("WINK_BEDROCK_GUARDRAIL_VERSION", "2"),
        ],
    );
    let value = stdout_json(&out);
    assert_eq!(
        value["texts"],
        json!(["ok", "ok"]),
        "--max-turns beats the file: {value}"
    );
    assert_eq!(
        fake.request_count(),
        2,
        "WINK_MODEL and WINK_BEDROCK_ENDPOINT beat the file"
    );
    let body = &fake.requests()[0].body;
    assert_eq!(
        body["guardrailConfig"]["guardrailIdentifier"], "gr0abc",
        "kept from the file"
    );
    assert_eq!(
        body["guardrailConfig"]["guardrailVersion"], "3",
        "the flag beats the env var"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_breaker_settings_take_effect() {
    let fake = FakeBedrock::start(FakeReply::text("unused", 1, 1)).await.expect("fake");
    fake.set_default(Step::ServerError(500));
    let adversary = guest("adversary");
    let input = models_input(1, None);
    let model = format!("bedrock:{HAIKU}");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            adversary.to_str().expect("path"),
            "--model",
            &model,
            "--input",
            &input,
        ];
        args.extend_from_slice(extra);
        wink_host_with(
            &args,
            &[
                ("WINK_BEDROCK_ENDPOINT", &fake.endpoint_url()),
                ("WINK_BEDROCK_RETRY_BASE_DELAY", "1ms"),
                ("WINK_BEDROCK_RETRY_MAX_DELAY", "5ms"),
            ],
        )
    };

    let value = stdout_json(&run(&["--bedrock-max-attempts", "1"]));
    assert!(
        value["error"].to_string().contains("gave up after 1 attempts"),
        "{value}"
    );
    assert_eq!(fake.request_count(), 1, "one attempt, no retry");

    let value = stdout_json(&run(&["--bedrock-max-attempts", "3"]));
    assert!(
        value["error"].to_string().contains("gave up after 3 attempts"),
        "{value}"
    );
    assert_eq!(fake.request_count(), 1 + 3);

    // One failure opens the circuit: the retry fails fast without a request.
    let value = stdout_json(&run(&[
        "--bedrock-max-attempts",
        "3",
        "--bedrock-breaker-threshold",
        "1",
    ]));
    assert!(value["error"].to_string().contains("circuit open"), "{value}");
    assert_eq!(fake.request_count(), 1 + 3 + 1);
}

#[test]
fn bad_settings_fail_the_run_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let adversary = guest("adversary");
    let component = adversary.to_str().expect("path");
    let model = format!("bedrock:{HAIKU}");
    let run = |extra: &[&str]| {
        let mut args = vec!["run", component, "--model", &model];
        args.extend_from_slice(extra);
        wink_host_with(&args, &[])
    };

    let out = run(&["--bedrock-max-attempts", "0"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'0'") && stderr.contains("--bedrock-max-attempts"),
        "{stderr}"
    );

    let out = run(&["--bedrock-breaker-cooldown", "soon"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"soon\"") && stderr.contains("--bedrock-breaker-cooldown"),
        "{stderr}"
    );

    let out = run(&["--bedrock-guardrail-id", "gr0abc", "--bedrock-guardrail-version", "v1"]);
    let line = one_line_error(&out);
    assert!(line.contains("\"v1\" is not DRAFT or a version number"), "{line}");

    let out = run(&["--bedrock-guardrail-id", "gr0abc"]);
    let line = one_line_error(&out);
    assert!(line.contains("\"gr0abc\" needs a version"), "{line}");

    let config = write(
        dir.path(),
        "typo.toml",
        "[bedrock]\nregion = \"us-east-1\"\nretries = 3\n",
    );
    let line = one_line_error(&run(&["--config", &config]));
    assert!(line.contains("typo.toml:3:1: unknown field `retries`"), "{line}");

    let config = write(dir.path(), "zero.toml", "[bedrock.breaker]\nfailure_threshold = 0\n");
    let line = one_line_error(&run(&["--config", &config]));
    assert!(
        line.contains("zero.toml:2:21:") && line.contains("integer `0`"),
        "{line}"
    );

    let out = wink_host_with(&["run", component, "--max-usd", "-1"], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`-1` is not a non-negative amount"), "{stderr}");

    let line = one_line_error(&run(&[
        "--config",
        &dir.path().join("missing.toml").display().to_string(),
    ]));
    assert!(
        line.contains("cannot read config") && line.contains("missing.toml"),
        "{line}"
    );
}

const POLICY: &str = r#"
[agents.adversary]
models = ["anthropic.claude-3-haiku-20240307-v1:0"]
budget = { max_turns = 2, timeout = "20s" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_grants_models_and_budget_and_flags_only_narrow_them() {
    let fake = FakeBedrock::start(FakeReply::text("granted", 1, 1))
        .await
        .expect("fake");
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = write(dir.path(), "policy.toml", POLICY);
    let narrow = write(dir.path(), "narrow.toml", "budget = { max_turns = 1 }\n");
    // The config's defaults apply only where the policy says nothing.
    let config = write(
        dir.path(),
        "wink.toml",
        "[budget]\nmax_turns = 9\nmax_output_tokens = 50\n",
    );
    let adversary = guest("adversary");
    let model = format!("bedrock:{HAIKU}");
    let endpoint = fake.endpoint_url();
    let run = |input: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            adversary.to_str().expect("path"),
            "--model",
            &model,
            "--policy",
            &policy,
            "--config",
            &config,
            "--input",
            input,
        ];
        args.extend_from_slice(extra);
        wink_host_with(&args, &[("WINK_BEDROCK_ENDPOINT", &endpoint)])
    };
    let three = models_input(3, None);

    let value = stdout_json(&run(&three, &[]));
    assert_eq!(
        value["texts"],
        json!(["granted", "granted"]),
        "the policy's max_turns: {value}"
    );
    assert_eq!(
        value["budget"]["output_tokens"],
        json!(50 - 2),
        "the config fills the rest: {value}"
    );
    let deadline_ms = value["budget"]["deadline_ms"].as_u64().expect("deadline");
    assert!(
        deadline_ms <= 20_000 && deadline_ms > 10_000,
        "the policy's timeout: {value}"
    );
    assert_eq!(fake.request_count(), 2);

    let value = stdout_json(&run(&three, &["--narrow", &narrow]));
    assert_eq!(value["texts"], json!(["granted"]), "--narrow: {value}");
    let value = stdout_json(&run(&three, &["--max-turns", "1", "--timeout", "5s"]));
    assert_eq!(value["texts"], json!(["granted"]), "--max-turns narrows: {value}");
    assert!(
        value["budget"]["deadline_ms"].as_u64().expect("deadline") <= 5_000,
        "{value}"
    );
    assert_eq!(fake.request_count(), 4);

    let opus = models_input(1, Some("anthropic.claude-3-opus-20240229-v1:0"));
    let value = stdout_json(&run(&opus, &[]));
    assert!(value["error"].to_string().contains("NotAllowed"), "{value}");
    assert_eq!(fake.request_count(), 4, "nothing sent for a model outside the policy");

    let line = one_line_error(&run(&three, &["--max-turns", "3"]));
    assert!(line.contains("max_turns 3 is above the policy's 2"), "{line}");
    let line = one_line_error(&run(&three, &["--timeout", "1m"]));
    assert!(line.contains("timeout 60000ms is above the policy's 20000ms"), "{line}");
    let line = one_line_error(&run(&opus, &["--allow-model", "anthropic.claude-3-opus-20240229-v1:0"]));
    assert!(
        line.contains("model \"anthropic.claude-3-opus-20240229-v1:0\" is not allowed"),
        "{line}"
    );
    assert_eq!(fake.request_count(), 4, "a refused run sends nothing");
}

/// `wink-host worker` reads the same file as `run`: the model, the Bedrock
/// endpoint and retries, the default budget and its own `[worker]` section
/// reach a job it claims from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reads_the_config_file_like_run() {
    let fake = FakeBedrock::start(FakeReply::text("from the worker", 1, 1))
        .await
        .expect("fake");
    let redis = common::redis::RedisServer::start();
    let mailbox = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(
        dir.path(),
        "wink.toml",
        &format!(
            r#"
[model]
default = "bedrock:{HAIKU}"
[bedrock]
endpoint_url = "{}"
[bedrock.retry]
max_attempts = 1
[budget]
max_turns = 2
[worker]
poll_wait = "100ms"
health_host = "127.0.0.1"
health_port = 0
"#,
            fake.endpoint_url()
        ),
    );
    let queue = ["--mailbox", mailbox.as_str(), "--queue", "configured"];
    let mut worker = wink_host_command(&["worker", "--config", &config, "--no-cache"], &[])
        .args(queue)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the worker");
    let adversary = guest("adversary");
    let input = models_input(3, None);
    let mut enqueue = vec![
        "enqueue",
        "--agent",
        adversary.to_str().expect("path"),
        "--input",
        &input,
        "--request-id",
        "configured-1",
    ];
    enqueue.extend(queue);
    let out = wink_host_with(&enqueue, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut reply_args = vec!["queue", "reply", "configured-1"];
    reply_args.extend(queue);
    let give_up = Instant::now() + Duration::from_secs(90);
    let reply = loop {
        let out = wink_host_with(&reply_args, &[]);
        if out.status.success() {
            break stdout_json(&out);
        }
        assert!(
            Instant::now() < give_up,
            "no reply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(status) = worker.try_wait().expect("try_wait") {
            panic!("the worker exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    worker.kill().expect("kill the worker");
    worker.wait().expect("reap the worker");
    let output = &reply["output"];
    assert_eq!(
        output["texts"],
        json!(["from the worker", "from the worker"]),
        "the file's model and endpoint: {reply}"
    );
    assert!(
        output["error"].to_string().contains("turns: limit 2"),
        "the file's [budget]: {reply}"
    );
    assert_eq!(fake.request_count(), 2);
    assert_eq!(fake.requests()[0].model_id, HAIKU);
}

#[test]
fn the_worker_refuses_a_bad_config_file_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A worker that accepts its settings runs until killed: give up after a while.
    let worker = |text: &str, extra: &[&str]| {
        let config = write(dir.path(), "worker.toml", text);
        let mut args = vec!["worker", "--config", &config, "--no-cache", "--health-port", "0"];
        args.extend_from_slice(extra);
        let mut child = wink_host_command(&args, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the worker");
        let give_up = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() > give_up {
                child.kill().expect("kill");
                panic!("the worker accepted {text:?} {extra:?} and kept running");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().expect("worker output")
    };
    let line = one_line_error(&worker("[worker]\nconcurrency = 2\nleese = \"1s\"\n", &[]));
    assert!(line.contains("worker.toml:3:1: unknown field `leese`"), "{line}");
    let line = one_line_error(&worker("[worker]\nlease = \"1s\"\nheartbeat = \"1s\"\n", &[]));
    assert!(
        line.contains("heartbeat 1000ms must be at most half the lease 1000ms"),
        "the [worker] section is read: {line}"
    );
    let line = one_line_error(&worker("[worker]\nlease = \"1s\"\n", &["--heartbeat", "2s"]));
    assert!(
        line.contains("heartbeat 2000ms must be at most half the lease 1000ms"),
        "the flag beats the file, which beats the default: {line}"
    );
    let line = one_line_error(&worker("[bedrock.guardrail]\nidentifier = \"gr0abc\"\n", &[]));
    assert!(line.contains("\"gr0abc\" needs a version"), "{line}");
}
