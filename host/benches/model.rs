//! `cargo xtask bench model`: what the host adds to a Bedrock call.
//!
//! Against the fake Bedrock server on loopback, in one run, measures:
//! - `bare`: `aws-sdk-bedrockruntime` `Converse` built and sent by hand;
//! - `wink`: the same call through the host's model path
//!   ([`ModelPolicy::converse`] over [`BedrockProvider`]): allowlist, budget
//!   check and `max-tokens` clamp, WIT-to-SDK request build, breaker,
//!   deadline check, the SDK call, response mapping and usage accounting;
//! - `wink_provider_only`: [`BedrockProvider::converse`] without the policy.
//!
//! What keeps the comparison fair:
//! - One SDK client: the bare call uses the provider's own client
//!   ([`BedrockProvider::sdk_client`]), so both share its configuration,
//!   connection pool and connection to the server.
//! - The same request: before measuring, the JSON bodies the server received
//!   from a bare and a host call are compared and must be equal.
//! - The same placement: every measured future is boxed. The host serves a
//!   guest's call inside a heap-allocated future (wasmtime boxes each async
//!   host call, inside the job's task), as any service calls Bedrock from a
//!   spawned task. An SDK future kept in the benchmark's hot stack frame
//!   runs about 10 µs faster than the same future on the heap on the
//!   reference machine; that figure is reported too (`bare_sdk_on_stack`)
//!   but is not a baseline a real caller gets.
//! - Interleaved: every iteration runs each variant once, in a shuffled
//!   order, so each follows every other equally often and none pays for
//!   another's leftover work.
//!
//! The overhead is `p50(wink) - p50(bare)`, as a share of the bare call; the
//! median of the per-iteration differences is reported beside it.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_bedrockruntime::types as sdk;
use serde_json::{Value, json};
use wink_host::bindings::model::InferenceConfig;
use wink_host::model::bedrock::fake::{FakeBedrock, FakeReply, sdk_config};
use wink_host::model::bedrock::{BedrockOptions, BedrockProvider};
use wink_host::model::{Budget, CallContext, ContentBlock, ConverseRequest, Message, ModelPolicy, ModelProvider, Role};

const MODEL: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";
const SYSTEM: &str = "Be brief.";
const PROMPT: &str = "Summarise the notes in the workspace in one sentence.";
const MAX_TOKENS: u32 = 512;
const WARMUP: usize = 200;
const ITERATIONS: usize = 3_000;

/// The measured variants, in report order.
#[derive(Debug, Clone, Copy)]
enum Variant {
    Bare,
    BareOnStack,
    Wink,
    WinkProviderOnly,
}

const VARIANTS: [Variant; 4] = [
    Variant::Bare,
    Variant::BareOnStack,
    Variant::Wink,
    Variant::WinkProviderOnly,
];

/// A boxed call, as the host and any task-based service run it.
type BoxedCall<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

struct Bench {
    fake: FakeBedrock,
    provider: BedrockProvider,
    policy: ModelPolicy,
}

fn main() {
    wink_host::allocator::tune();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let samples = tokio.block_on(measure());
    let paired = |variant: Variant| paired_median_us(&samples[variant as usize], &samples[Variant::Bare as usize]);
    let paired_wink = paired(Variant::Wink);
    let paired_provider = paired(Variant::WinkProviderOnly);
    let [bare, on_stack, wink, provider_only] = VARIANTS.map(|v| common::summary(&samples[v as usize]));
    let p50 = |s: &Value| s["p50_us"].as_f64().unwrap_or(0.0);
    let p99 = |s: &Value| s["p99_us"].as_f64().unwrap_or(0.0);
    let percent = |us: f64, of: &Value| common::round(100.0 * us / p50(of));
    let overhead_p50 = p50(&wink) - p50(&bare);
    common::write_report(
        "model",
        json!({
            "scenario": "model",
            "what": "one Converse call to the fake Bedrock server on loopback through one SDK client, byte-identical requests, boxed futures, shuffled interleaving: bare aws-sdk call vs the host's model path (policy, budget, request build, breaker, deadline check, response mapping, ledger)",
            "bare_sdk": bare,
            "bare_sdk_on_stack": on_stack,
            "wink": wink,
            "wink_provider_only": provider_only,
            "overhead_p50_us": common::round(overhead_p50),
            "overhead_p99_us": common::round(p99(&wink) - p99(&bare)),
            "overhead_p50_percent": percent(overhead_p50, &bare),
            "overhead_paired_median_us": common::round(paired_wink),
            "overhead_paired_median_percent": percent(paired_wink, &bare),
            "provider_overhead_paired_median_us": common::round(paired_provider),
            "overhead_vs_on_stack_p50_us": common::round(p50(&wink) - p50(&on_stack)),
            "target": {"overhead_percent_max": 5},
            "machine": common::machine(),
        }),
    );
}

async fn measure() -> Vec<Vec<Duration>> {
    let bench = Bench::start().await;
    bench.check_same_request().await;
    let mut samples = vec![Vec::with_capacity(ITERATIONS); VARIANTS.len()];
    let mut order = VARIANTS;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for i in 0..WARMUP + ITERATIONS {
        // A fresh request id per iteration, so the budget never runs out.
        let context = CallContext {
            request_id: Arc::from(format!("bench-{i}")),
            job_id: Arc::from("bench"),
            turn: 0,
            deadline: Instant::now() + Duration::from_secs(30),
            metrics: None,
        };
        rng.shuffle(&mut order);
        for variant in order {
            // Each call runs inside a job whose deadline timer is already
            // armed, as `run_agent` arms it when the job starts.
            let job = tokio::time::timeout_at(context.deadline.into(), async {
                settle().await;
                bench.time(variant, &context).await
            });
            let elapsed = job.await.expect("the call finished within its deadline");
            if i >= WARMUP {
                samples[variant as usize].push(elapsed);
            }
        }
        // The worker forgets a request's usage when it acks the job; without
        // this the ledger would grow by one request per iteration.
        bench.policy.ledger.forget(&context.request_id).await;
    }
    assert_eq!(
        bench.fake.request_count(),
        2 + VARIANTS.len() * (WARMUP + ITERATIONS),
        "every call reached the server"
    );
    samples
}

impl Bench {
    async fn start() -> Self {
        let fake = FakeBedrock::start(FakeReply::text("The notes list three tasks.", 120, 9))
            .await
            .expect("fake bedrock");
        let provider = BedrockProvider::from_sdk_config(
            &sdk_config("AKIDBENCH", "bench-secret"),
            BedrockOptions {
                default_model: Some(MODEL.into()),
                endpoint_url: Some(fake.endpoint_url()),
                ..BedrockOptions::default()
            },
        );
        // Every dimension limited, so every check and the clamp run.
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
        Self { fake, provider, policy }
    }

    /// One bare and one host call must send the same body, or the
    /// comparison measures different work.
    async fn check_same_request(&self) {
        let context = CallContext {
            request_id: Arc::from("check"),
            job_id: Arc::from("bench"),
            turn: 0,
            deadline: Instant::now() + Duration::from_secs(30),
            metrics: None,
        };
        bare_call(self.provider.sdk_client()).await;
        let response = self.policy.converse(&self.provider, request(), &context).await;
        assert!(response.is_ok(), "{response:?}");
        let recorded = self.fake.requests();
        let [bare, wink] = [&recorded[0], &recorded[1]];
        assert_eq!(
            bare.body, wink.body,
            "the bare and the host call send different requests"
        );
        assert_eq!(bare.model_id, wink.model_id);
    }

    /// One call of `variant`, timed from its first poll to its answer.
    async fn time(&self, variant: Variant, context: &CallContext) -> Duration {
        let client = self.provider.sdk_client();
        // The guest's request arrives already built (lifted from its memory).
        let request = request();
        let call: BoxedCall<'_> = match variant {
            Variant::BareOnStack => {
                let started = Instant::now();
                bare_call(client).await;
                return started.elapsed();
            }
            Variant::Bare => Box::pin(bare_call(client)),
            Variant::Wink => Box::pin(async move {
                let response = self.policy.converse(&self.provider, request, context).await;
                assert!(response.is_ok(), "{response:?}");
            }),
            Variant::WinkProviderOnly => Box::pin(async move {
                let response = self.provider.converse(&request, context).await;
                assert!(response.is_ok(), "{response:?}");
            }),
        };
        let started = Instant::now();
        call.await;
        started.elapsed()
    }
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
        system: vec![SYSTEM.into()],
        messages: vec![Message {
            role: Role::User,
            content: vec![ContentBlock::Text(PROMPT.into())],
        }],
        tools: vec![],
        config: InferenceConfig {
            max_tokens: Some(MAX_TOKENS),
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
        .system(sdk::SystemContentBlock::Text(SYSTEM.into()))
        .inference_config(
            sdk::InferenceConfiguration::builder()
                .max_tokens(MAX_TOKENS as i32)
                .build(),
        )
        .send()
        .await
        .expect("bare converse");
    let texts = match output.output {
        Some(sdk::ConverseOutput::Message(m)) => {
            m.content.into_iter().filter_map(|b| b.as_text().ok().cloned()).count()
        }
        _ => 0,
    };
    assert_eq!(texts, 1);
}

/// Median of `a[i] - b[i]`, in microseconds: the two were measured in the
/// same iteration, so machine load cancels out of each difference.
fn paired_median_us(a: &[Duration], b: &[Duration]) -> f64 {
    common::median(a.iter().zip(b).map(|(a, b)| (a.as_secs_f64() - b.as_secs_f64()) * 1e6))
}

/// A tiny deterministic generator for the shuffles (xorshift64).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Fisher-Yates.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}
