//! The metrics a real scrape shows after real jobs, checked by promtool; and
//! the alert rules and dashboard in k8s/monitoring, checked against it.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use wink_host::model::bedrock::fake::{FakeBedrock, FakeReply, Step, sdk_config};
use wink_host::model::bedrock::{BedrockOptions, BedrockProvider, RetryPolicy};
use wink_host::model::{Budget, ModelPolicy};
use wink_host::runtime::{AgentComponent, JobEnv, Limits, Runtime};
use wink_host::tools::ToolSet;

const MODEL: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";

#[tokio::test]
async fn jobs_tool_calls_and_limit_hits_are_counted_and_promtool_accepts_the_scrape() {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    assert!(
        run(&runtime, &agent, r#"{"mode": "echo"}"#, env())
            .await
            .outcome
            .is_ok()
    );
    let mut starved = env();
    starved.limits = Limits {
        fuel: 1_000_000,
        ..test_limits()
    };
    assert!(
        run(&runtime, &agent, r#"{"mode": "spin"}"#, starved)
            .await
            .outcome
            .is_err()
    );
    let missing_tool = r#"{"mode": "tool", "name": "nope", "input": {}}"#;
    assert!(run(&runtime, &agent, missing_tool, env()).await.outcome.is_ok());

    let scrape = runtime.metrics().encode();
    for line in [
        r#"wink_jobs_total{agent="adversary",outcome="succeeded"} 2"#,
        r#"wink_jobs_total{agent="adversary",outcome="limit_exceeded"} 1"#,
        r#"wink_sandbox_limit_hits_total{guest="agent",limit="fuel"} 1"#,
        r#"wink_tool_calls_total{tool="_ungranted",outcome="not_found"} 1"#,
        r#"wink_job_duration_seconds_count{agent="adversary"} 3"#,
        "wink_jobs_active 0",
    ] {
        assert!(scrape.contains(line), "missing {line} in:\n{scrape}");
    }
    promtool_check(&scrape);
}

/// The real Bedrock client against the fake server, which throttles the
/// first attempt; the job may call `MODEL` twice.
async fn bedrock_env(fake: &FakeBedrock) -> JobEnv {
    let provider = BedrockProvider::from_sdk_config(
        &sdk_config("AKIDTEST", "secret"),
        BedrockOptions {
            default_model: Some(MODEL.into()),
            endpoint_url: Some(fake.endpoint_url()),
            retry: RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(5),
            },
            ..BedrockOptions::default()
        },
    );
    let mut env = env_with(Arc::new(provider));
    env.model_policy = ModelPolicy {
        allowed_models: Some(vec![MODEL.into()]),
        budget: Budget {
            max_turns: Some(2),
            ..Budget::default()
        },
        ..ModelPolicy::default()
    };
    env
}

async fn run_ok(runtime: &Runtime, agent: &AgentComponent, input: Value, env: JobEnv) -> Value {
    output(run(runtime, agent, &input.to_string(), env).await)
}

/// One of each: model calls (succeeded after a throttle, refused by the
/// budget, refused by the allowlist), a tool call the policy denies, a job
/// stopped by its fuel limit, and the mailbox instruments the worker records.
async fn record_one_of_each(runtime: &Runtime) {
    let agent = load(runtime, "adversary").await;
    let fake = FakeBedrock::start(FakeReply::text("ok", 10, 5)).await.expect("fake");
    fake.push([Step::Throttle]);
    let three = run_ok(
        runtime,
        &agent,
        json!({"mode": "models", "count": 3}),
        bedrock_env(&fake).await,
    )
    .await;
    assert_eq!(three["texts"], json!(["ok", "ok"]), "{three}");
    assert!(three["error"].to_string().contains("BudgetExceeded"), "{three}");
    let other = json!({"mode": "models", "count": 1, "model": "made-up-model"});
    let other = run_ok(runtime, &agent, other, bedrock_env(&fake).await).await;
    assert!(other["error"].to_string().contains("NotAllowed"), "{other}");

    let root = tempfile::tempdir().expect("tempdir");
    let mut with_tool = with_workspace(env(), root.path());
    let tool = runtime
        .load_tool(&guest("read_file"), Limits::default())
        .await
        .expect("tool");
    with_tool.tools = Arc::new(ToolSet::new([tool]).expect("tool set"));
    let escape = json!({"mode": "tool", "name": "read_file", "input": {"path": "../etc/passwd"}});
    assert!(
        run_ok(runtime, &agent, escape, with_tool).await["error"]
            .to_string()
            .contains("enied")
    );

    let mut starved = env();
    starved.limits = Limits {
        fuel: 1_000_000,
        ..test_limits()
    };
    assert!(
        run(runtime, &agent, r#"{"mode": "spin"}"#, starved)
            .await
            .outcome
            .is_err()
    );

    let metrics = runtime.metrics();
    metrics.mailbox_claimed("jobs", 3);
    metrics.mailbox_acked("jobs", 2);
    metrics.mailbox_nacked("jobs", 1);
    metrics.mailbox_dead_lettered("jobs", "max_attempts", 1);
    metrics.mailbox_depth("jobs", 4, 2, 1, 1);
}

#[tokio::test]
async fn model_policy_and_mailbox_instruments_are_exported_and_the_monitoring_files_use_only_exported_names() {
    let runtime = runtime();
    record_one_of_each(&runtime).await;
    let scrape = runtime.metrics().encode();
    let model = format!(r#"model="{MODEL}""#);
    for line in [
        format!(r#"wink_model_calls_total{{{model},outcome="succeeded"}} 2"#),
        format!(r#"wink_model_calls_total{{{model},outcome="budget_exceeded"}} 1"#),
        r#"wink_model_calls_total{model="_other",outcome="not_allowed"} 1"#.to_owned(),
        format!(r#"wink_model_call_duration_seconds_count{{{model}}} 3"#),
        format!(r#"wink_model_tokens_total{{{model},type="input"}} 20"#),
        format!(r#"wink_model_tokens_total{{{model},type="output"}} 10"#),
        format!(r#"wink_model_throttles_total{{{model}}} 1"#),
        format!(r#"wink_model_circuit_state{{{model}}} 0"#),
        r#"wink_policy_denials_total{kind="budget_exceeded"} 1"#.to_owned(),
        r#"wink_policy_denials_total{kind="model_not_allowed"} 1"#.to_owned(),
        r#"wink_policy_denials_total{kind="tool_fs_denied"} 1"#.to_owned(),
        r#"wink_sandbox_limit_hits_total{guest="agent",limit="fuel"} 1"#.to_owned(),
        r#"wink_mailbox_claimed_total{queue="jobs"} 3"#.to_owned(),
        r#"wink_mailbox_acked_total{queue="jobs"} 2"#.to_owned(),
        r#"wink_mailbox_nacked_total{queue="jobs"} 1"#.to_owned(),
        r#"wink_mailbox_dead_lettered_total{queue="jobs",reason="max_attempts"} 1"#.to_owned(),
        r#"wink_mailbox_depth{queue="jobs",state="ready"} 4"#.to_owned(),
        r#"wink_mailbox_depth{queue="jobs",state="in_flight"} 2"#.to_owned(),
        r#"wink_mailbox_depth{queue="jobs",state="delayed"} 1"#.to_owned(),
        r#"wink_mailbox_depth{queue="jobs",state="dead"} 1"#.to_owned(),
        "# TYPE wink_model_cost_usd_total counter".to_owned(),
    ] {
        assert!(scrape.contains(&line), "missing {line} in:\n{scrape}");
    }
    // Two calls of 10 input and 5 output tokens at $0.80 and $4 per million.
    let cost: f64 = sample(&scrape, &format!(r#"wink_model_cost_usd_total{{{model}}}"#))
        .parse()
        .expect("a number");
    assert!((cost - 2.0 * 28e-6).abs() < 1e-9, "cost {cost}");
    promtool_check(&scrape);
    check_monitoring_files(&scrape);
}

/// The value of the sample named exactly `series`.
fn sample<'a>(scrape: &'a str, series: &str) -> &'a str {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{scrape}"))
}

/// The alert rules pass promtool's syntax check and their unit tests, the
/// dashboard's queries are valid PromQL, and both use only metric names the
/// host exports (as seen in `scrape`, after one of everything was recorded).
fn check_monitoring_files(scrape: &str) {
    let dir = repo_root().join("k8s/monitoring");
    promtool(&["check", "rules"], &dir.join("alerts.yaml"));
    promtool(&["test", "rules"], &dir.join("alerts.test.yaml"));
    let exported: BTreeSet<&str> = scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let name = regex::Regex::new(r"\bwink_[a-z0-9_]+").expect("regex");
    for file in ["alerts.yaml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("monitoring file");
        let used: BTreeSet<&str> = name.find_iter(&text).map(|m| m.as_str()).collect();
        assert!(!used.is_empty(), "{file} uses no wink metric");
        let unknown: Vec<&&str> = used.iter().filter(|name| !exported.contains(**name)).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics wink-host does not export: {unknown:?}"
        );
    }
    check_dashboard_queries(&dir.join("grafana-dashboard.json"));
}

/// Every query of the dashboard, with Grafana's variables filled in, loaded
/// by promtool as a recording rule: a PromQL syntax error fails the check.
fn check_dashboard_queries(path: &Path) {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut rules = Vec::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate panel id"
        );
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let filled = expr
                .replace("$__rate_interval", "5m")
                .replace("$__range", "6h")
                .replace("$agent", ".*")
                .replace("$queue", ".*")
                .replace("$model", ".*");
            rules.push(json!({"record": format!("dashboard:panel_{}", rules.len()), "expr": filled}));
        }
    }
    assert!(rules.len() >= 20, "only {} queries", rules.len());
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().expect("temp file");
    // JSON is YAML.
    std::fs::write(
        file.path(),
        json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    )
    .expect("write rules");
    promtool(&["check", "rules"], file.path());
}

fn promtool(args: &[&str], file: &Path) {
    let out = Command::new("promtool")
        .args(args)
        .arg(file)
        .output()
        .expect("promtool is missing: install Debian's `prometheus` (cargo xtask test does)");
    assert!(
        out.status.success(),
        "promtool {args:?} {} failed ({}): {}{}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `promtool check metrics` exits 0 for a clean scrape, 3 for lint problems
/// and 1 for parse errors. `cargo xtask test` installs it (Debian `prometheus`).
fn promtool_check(scrape: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: install Debian's `prometheus` (cargo xtask test does)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("write scrape");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool rejected the scrape ({}): {}{}\n{scrape}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
