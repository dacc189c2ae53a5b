//! Per-job model budgets and the model allowlist, enforced by the host around
//! the real Bedrock client (against the fake server) for real agents.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{Value, json};
use wink_host::job::JobRequest;
use wink_host::model::bedrock::fake::{FakeBedrock, FakeReply, Step, sdk_config};
use wink_host::model::bedrock::{BedrockOptions, BedrockProvider};
use wink_host::model::{Budget, ModelPolicy};
use wink_host::runtime::JobEnv;

/// Priced at $0.80 / $4.00 per million input / output tokens.
const MODEL: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";

/// Every call answers with 10 input and 5 output tokens.
async fn fake() -> FakeBedrock {
    FakeBedrock::start(FakeReply::text("ok", 10, 5)).await.expect("fake")
}

fn env_for(fake: &FakeBedrock, policy: ModelPolicy) -> JobEnv {
    let options = BedrockOptions {
        default_model: Some(MODEL.into()),
        endpoint_url: Some(fake.endpoint_url()),
        ..BedrockOptions::default()
    };
    let provider = Arc::new(BedrockProvider::from_sdk_config(
        &sdk_config("AKIDTEST", "secret"),
        options,
    ));
    let mut env = env_with(provider);
    env.model_policy = policy;
    env
}

fn budget_policy(budget: Budget) -> ModelPolicy {
    ModelPolicy {
        budget,
        ..ModelPolicy::default()
    }
}

async fn calls(env: JobEnv, request: JobRequest) -> Value {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    output(runtime.run_agent(&agent, request, env).await)
}

fn many(count: u32) -> String {
    json!({"mode": "models", "count": count, "prompt": "hi"}).to_string()
}

/// Runs `count` calls under `budget` and checks the refusal names `dimension`
/// and that nothing was sent after it.
async fn exceed(budget: Budget, dimension: &str, answered: usize) -> (Value, FakeBedrock) {
    let fake = fake().await;
    let out = calls(env_for(&fake, budget_policy(budget)), JobRequest::new("r", many(10))).await;
    let error = out["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("BudgetExceeded(\"{dimension}: limit")),
        "{dimension}: {out}"
    );
    assert_eq!(
        out["texts"].as_array().map(Vec::len),
        Some(answered),
        "{dimension}: {out}"
    );
    assert_eq!(
        fake.request_count(),
        answered,
        "{dimension}: no call is sent after the limit"
    );
    (out, fake)
}

#[tokio::test]
async fn input_tokens_are_enforced() {
    let budget = Budget {
        max_input_tokens: Some(25),
        ..Budget::default()
    };
    let (out, _) = exceed(budget, "input_tokens", 3).await;
    assert_eq!(out["budget"]["input_tokens"], json!(0));
}

#[tokio::test]
async fn output_tokens_are_enforced_and_max_tokens_is_clamped() {
    let budget = Budget {
        max_output_tokens: Some(12),
        ..Budget::default()
    };
    let (out, fake) = exceed(budget, "output_tokens", 3).await;
    let sent: Vec<Value> = fake
        .requests()
        .iter()
        .map(|r| r.body["inferenceConfig"]["maxTokens"].clone())
        .collect();
    assert_eq!(
        sent,
        [json!(12), json!(7), json!(2)],
        "max-tokens clamped to what is left"
    );
    assert_eq!(out["budget"]["output_tokens"], json!(0));
}

#[tokio::test]
async fn total_tokens_are_enforced() {
    let budget = Budget {
        max_total_tokens: Some(35),
        ..Budget::default()
    };
    exceed(budget, "total_tokens", 3).await;
}

#[tokio::test]
async fn turns_are_enforced() {
    let budget = Budget {
        max_turns: Some(2),
        ..Budget::default()
    };
    let (out, _) = exceed(budget, "turns", 2).await;
    assert_eq!(out["budget"]["turns"], json!(0));
}

#[tokio::test]
async fn usd_is_priced_per_model_and_enforced() {
    // 10 x $0.80 + 5 x $4.00 per million = 28 micro-dollars a call.
    let budget = Budget {
        max_micro_usd: Some(60),
        ..Budget::default()
    };
    let (out, _) = exceed(budget, "usd", 2).await;
    assert_eq!(out["budget"]["micro_usd"], json!(4));
}

#[tokio::test]
async fn a_usd_budget_on_an_unpriced_model_is_refused() {
    let fake = fake().await;
    let policy = ModelPolicy {
        default_model: Some("meta.llama3-8b-instruct-v1:0".into()),
        ..budget_policy(Budget {
            max_micro_usd: Some(1000),
            ..Budget::default()
        })
    };
    let out = calls(env_for(&fake, policy), JobRequest::new("r", many(1))).await;
    assert!(out["error"].to_string().contains("has no price"), "{out}");
    assert_eq!(fake.request_count(), 0);
}

#[tokio::test]
async fn the_guest_reads_what_is_left_and_unlimited_dimensions_are_none() {
    let fake = fake().await;
    let budget = Budget {
        max_input_tokens: Some(1000),
        max_total_tokens: Some(2000),
        max_turns: Some(5),
        ..Budget::default()
    };
    let out = calls(env_for(&fake, budget_policy(budget)), JobRequest::new("r", many(1))).await;
    let left = &out["budget"];
    assert_eq!(left["input_tokens"], json!(990));
    assert_eq!(left["total_tokens"], json!(1985));
    assert_eq!(left["turns"], json!(4));
    assert_eq!(left["output_tokens"], Value::Null);
    assert_eq!(left["micro_usd"], Value::Null);
    let deadline_ms = left["deadline_ms"].as_u64().expect("deadline");
    assert!(deadline_ms > 0 && deadline_ms <= test_limits().deadline.as_millis() as u64);
}

#[tokio::test]
async fn a_redelivered_request_continues_from_what_it_spent() {
    let fake = fake().await;
    let env = env_for(
        &fake,
        budget_policy(Budget {
            max_turns: Some(3),
            ..Budget::default()
        }),
    );
    let first = calls(env.clone(), JobRequest::new("order-7", many(2))).await;
    assert_eq!(first["budget"]["turns"], json!(1), "{first}");
    let redelivery = JobRequest {
        job_id: "order-7-retry".into(),
        attempt: 2,
        ..JobRequest::new("order-7", many(5))
    };
    let second = calls(env.clone(), redelivery).await;
    assert_eq!(
        second["texts"].as_array().map(Vec::len),
        Some(1),
        "one turn was left: {second}"
    );
    assert!(
        second["error"].to_string().contains("turns: limit 3, spent 3"),
        "{second}"
    );
    let other = calls(env, JobRequest::new("order-8", many(1))).await;
    assert_eq!(other["budget"]["turns"], json!(2), "another request has its own budget");
    assert_eq!(fake.request_count(), 4);
}

#[tokio::test]
async fn a_model_outside_the_allowlist_is_not_allowed() {
    let fake = fake().await;
    let policy = ModelPolicy {
        allowed_models: Some(vec![MODEL.into()]),
        ..ModelPolicy::default()
    };
    let env = env_for(&fake, policy);
    let asked = json!({"mode": "models", "count": 1, "model": "anthropic.claude-opus-4-1-20250805-v1:0"});
    let out = calls(env.clone(), JobRequest::new("r", asked.to_string())).await;
    let error = out["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("NotAllowed(\"model anthropic.claude-opus-4-1-20250805-v1:0 is not granted"),
        "{out}"
    );
    assert_eq!(fake.request_count(), 0, "nothing was sent");
    let default = calls(env, JobRequest::new("r2", many(1))).await;
    assert_eq!(
        default["texts"],
        json!(["ok"]),
        "the default model is granted: {default}"
    );
    assert_eq!(fake.requests()[0].model_id, MODEL);
}

/// A model call the job's deadline cuts short may still be billed: the
/// ledger is charged its worst case, so a retry of the job cannot spend the
/// budget as if it had never been made.
#[tokio::test]
async fn a_call_cut_short_by_the_deadline_is_charged_its_worst_case() {
    let fake = fake().await;
    fake.set_default(Step::Slow(
        std::time::Duration::from_secs(5),
        Box::new(Step::Reply(FakeReply::text("too late", 10, 5))),
    ));
    let policy = budget_policy(Budget {
        max_output_tokens: Some(1_000),
        ..Budget::default()
    });
    let ledger = policy.ledger.clone();
    let mut env = env_for(&fake, policy);
    env.limits.deadline = std::time::Duration::from_millis(500);
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let report = runtime.run_agent(&agent, JobRequest::new("cut", many(1)), env).await;
    let err = report.outcome.expect_err("the deadline cut the call short");
    assert!(err.to_string().contains("deadline"), "{err}");

    let started = std::time::Instant::now();
    let spent = loop {
        let spent = ledger.spent("cut").await.expect("spent");
        if spent.output_tokens > 0 || started.elapsed() > std::time::Duration::from_secs(5) {
            break spent;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // Not a turn: turns count answers.
    assert_eq!((spent.turns, spent.output_tokens), (0, 1_000), "{spent:?}");
    assert!(spent.input_tokens >= 1, "{spent:?}");
    // $4 per million output tokens, $0.80 per million input tokens.
    assert!(spent.micro_usd >= 4_000, "{spent:?}");
}
