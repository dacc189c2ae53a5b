//! `cargo xtask bench model`: what the host adds to a Bedrock call.
//!
//! Against the fake Bedrock server on loopback, in one run and interleaved
//! call by call (so both see the same machine state), measures:
//! - `bare`: `aws-sdk-bedrockruntime` `Converse` built and sent by hand;
//! - `wink`: the same call through the host's model path
//!   ([`ModelPolicy::converse`] over [`BedrockProvider`]): allowlist, budget
//!   check and `max-tokens` clamp, WIT-to-SDK request build, breaker, the SDK
//!   call, response mapping and usage accounting in the ledger.
//!
//! The overhead is `wink - bare` at p50, as a share of the bare call.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_bedrockruntime::types as sdk;
use serde_json::json;
use wink_host::bindings::model::InferenceConfig;
use wink_host::model::bedrock::fake::{FakeBedrock, FakeReply, sdk_config};
use wink_host::model::bedrock::{BedrockOptions, BedrockProvider};
use wink_host::model::{Budget, CallContext, ContentBlock, ConverseRequest, Message, ModelPolicy, ModelProvider, Role};

const MODEL: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";
const PROMPT: &str = "Summarise the notes in the workspace in one sentence.";
const WARMUP: usize = 200;
const ITERATIONS: usize = 3_000;

fn main() {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let (mut bare, mut wink, mut provider_only) = tokio.block_on(measure());
    let bare_summary = common::summary(&mut bare);
    let wink_summary = common::summary(&mut wink);
    let provider_summary = common::summary(&mut provider_only);
    let p50 = |s: &serde_json::Value| s["p50_us"].as_f64().unwrap_or(0.0);
    let p99 = |s: &serde_json::Value| s["p99_us"].as_f64().unwrap_or(0.0);
    let overhead_p50 = p50(&wink_summary) - p50(&bare_summary);
    let overhead_p99 = p99(&wink_summary) - p99(&bare_summary);
    common::write_report(
        "model",
        json!({
            "scenario": "model",
            "what": "one Converse call to the fake Bedrock server on loopback: bare aws-sdk call vs the host's model path (policy, budget, request build, breaker, response mapping, ledger), interleaved",
            "bare_sdk": bare_summary,
            "wink": wink_summary,
            "wink_provider_only": provider_summary,
            "overhead_p50_us": common::round(overhead_p50),
            "overhead_p99_us": common::round(overhead_p99),
            "overhead_p50_percent": common::round(100.0 * overhead_p50 / p50(&bare_summary)),
            "target": {"overhead_percent_max": 5},
            "machine": common::machine(),
        }),
    );
}

async fn measure() -> (Vec<Duration>, Vec<Duration>, Vec<Duration>) {
    let fake = FakeBedrock::start(FakeReply::text("The notes list three tasks.", 120, 9))
        .await
        .expect("fake bedrock");
    let sdk_config = sdk_config("AKIDBENCH", "bench-secret");
    let bare_client = aws_sdk_bedrockruntime::Client::from_conf(
        aws_sdk_bedrockruntime::config::Builder::from(&sdk_config)
            .endpoint_url(fake.endpoint_url())
            .retry_config(aws_smithy_types::retry::RetryConfig::disabled())
            .build(),
    );
    let provider = BedrockProvider::from_sdk_config(
        &sdk_config,
        BedrockOptions {
            default_model: Some(MODEL.into()),
            endpoint_url: Some(fake.endpoint_url()),
            ..BedrockOptions::default()
        },
    );
    // Every dimension limited, so every check and the clamp run; the ledger
    // is keyed per iteration so the budget never runs out.
    let policy = ModelPolicy {
        allowed_models: Some(vec![MODEL.into()]),
        budget: Budget {
            max_input_tokens: Some(1_000_000),
            max_output_tokens: Some(1_000_000),
            max_total_tokens: Some(2_000_000),
            max_micro_usd: Some(10_000_000),
            max_turns: Some(1_000),
        },
        ..ModelPolicy::default()
    };
    let mut bare = Vec::with_capacity(ITERATIONS);
    let mut wink = Vec::with_capacity(ITERATIONS);
    let mut provider_only = Vec::with_capacity(ITERATIONS);
    for i in 0..WARMUP + ITERATIONS {
        let context = CallContext {
            request_id: Arc::from(format!("bench-{i}")),
            job_id: Arc::from("bench"),
            turn: 0,
            deadline: Instant::now() + Duration::from_secs(30),
            metrics: None,
        };
        let time_bare = async {
            settle().await;
            let started = Instant::now();
            bare_call(&bare_client).await;
            started.elapsed()
        };
        let time_wink = async {
            settle().await;
            let started = Instant::now();
            let response = policy
                .converse(&provider as &dyn ModelProvider, request(), &context)
                .await;
            assert!(response.is_ok(), "{response:?}");
            started.elapsed()
        };
        let time_provider = async {
            settle().await;
            let started = Instant::now();
            let response = provider.converse(&request(), &context).await;
            assert!(response.is_ok(), "{response:?}");
            started.elapsed()
        };
        // Alternate which goes first, so neither pays for the other's
        // leftover work (connection bookkeeping, the fake server's tasks).
        let (bare_elapsed, wink_elapsed) = if i % 2 == 0 {
            let bare = time_bare.await;
            (bare, time_wink.await)
        } else {
            let wink = time_wink.await;
            (time_bare.await, wink)
        };
        let provider_elapsed = time_provider.await;
        if i >= WARMUP {
            bare.push(bare_elapsed);
            wink.push(wink_elapsed);
            provider_only.push(provider_elapsed);
        }
    }
    assert_eq!(fake.request_count(), 3 * (WARMUP + ITERATIONS));
    (bare, wink, provider_only)
}

/// Let tasks woken by the previous call (client connection, fake server)
/// run before the clock starts: client and server share this thread.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// The guest's request, as it arrives from the `model` import.
fn request() -> ConverseRequest {
    ConverseRequest {
        model: None,
        system: vec!["Be brief.".into()],
        messages: vec![Message {
            role: Role::User,
            content: vec![ContentBlock::Text(PROMPT.into())],
        }],
        tools: vec![],
        config: InferenceConfig {
            max_tokens: Some(512),
            temperature: None,
            top_p: None,
            top_k: None,
            stop_sequences: vec![],
        },
    }
}

/// The same call built directly with the SDK, the answer's text extracted.
async fn bare_call(client: &aws_sdk_bedrockruntime::Client) {
    let message = sdk::Message::builder()
        .role(sdk::ConversationRole::User)
        .content(sdk::ContentBlock::Text(PROMPT.into()))
        .build()
        .expect("message");
    let output = client
        .converse()
        .model_id(MODEL)
        .messages(message)
        .system(sdk::SystemContentBlock::Text("Be brief.".into()))
        .inference_config(sdk::InferenceConfiguration::builder().max_tokens(512).build())
        .send()
        .await
        .expect("bare converse");
    let text = match output.output {
        Some(sdk::ConverseOutput::Message(m)) => {
            m.content.into_iter().filter_map(|b| b.as_text().ok().cloned()).count()
        }
        _ => 0,
    };
    assert_eq!(text, 1);
}
