//! The Bedrock provider: the real `aws-sdk-bedrockruntime` client against the
//! fake Bedrock Runtime server on loopback, directly and through real agents.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use wink_host::bindings::model::InferenceConfig;
use wink_host::bindings::types::ToolSpec;
use wink_host::model::bedrock::fake::{FakeBedrock, FakeBlock, FakeReply, Step, sdk_config};
use wink_host::model::bedrock::{BedrockOptions, BedrockProvider, BreakerConfig, Guardrail, RetryPolicy};
use wink_host::model::{
    CallContext, ContentBlock, ConverseRequest, ConverseResponse, Message, ModelError, ModelProvider, Role, StopReason,
    ToolResult, ToolUse, message_text,
};

const MODEL: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEYzz";
const ACCESS_KEY: &str = "AKIAFAKEACCESSKEYID1";

fn options(fake: &FakeBedrock) -> BedrockOptions {
    BedrockOptions {
        default_model: Some(MODEL.into()),
        endpoint_url: Some(fake.endpoint_url()),
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        },
        ..BedrockOptions::default()
    }
}

fn provider(options: BedrockOptions) -> Arc<BedrockProvider> {
    Arc::new(BedrockProvider::from_sdk_config(
        &sdk_config(ACCESS_KEY, SECRET),
        options,
    ))
}

fn context(deadline: Duration) -> CallContext {
    CallContext {
        request_id: Arc::from("r"),
        job_id: Arc::from("j"),
        turn: 0,
        deadline: Instant::now() + deadline,
        metrics: None,
    }
}

fn config() -> InferenceConfig {
    InferenceConfig {
        max_tokens: Some(256),
        temperature: Some(0.5),
        top_p: Some(0.9),
        top_k: Some(40),
        stop_sequences: vec!["STOP".into()],
    }
}

fn user(text: &str) -> Message {
    Message {
        role: Role::User,
        content: vec![ContentBlock::Text(text.into())],
    }
}

/// A second-turn request: the model asked for a tool, the agent answers.
fn tool_round_trip_request() -> ConverseRequest {
    ConverseRequest {
        model: None,
        system: vec!["Be brief.".into()],
        messages: vec![
            user("What is in notes.txt?"),
            Message {
                role: Role::Assistant,
                content: vec![ContentBlock::ToolUse(ToolUse {
                    id: "t1".into(),
                    name: "read_file".into(),
                    input: r#"{"path":"notes.txt"}"#.into(),
                })],
            },
            Message {
                role: Role::User,
                content: vec![ContentBlock::ToolResult(ToolResult {
                    tool_use_id: "t1".into(),
                    content: r#"{"content":"three tasks"}"#.into(),
                    is_error: false,
                })],
            },
        ],
        tools: vec![ToolSpec {
            name: "read_file".into(),
            description: "Read a file".into(),
            input_schema: r#"{"type":"object","properties":{"path":{"type":"string"}}}"#.into(),
        }],
        config: config(),
    }
}

#[tokio::test]
async fn tool_use_round_trips_through_the_sdk_with_every_request_field() {
    let fake = FakeBedrock::start(FakeReply::tool_use("t2", "read_file", json!({"path": "todo.md"})))
        .await
        .expect("fake");
    let provider = provider(BedrockOptions {
        guardrail: Some(Guardrail {
            identifier: "gr-1".into(),
            version: "3".into(),
            trace: true,
        }),
        ..options(&fake)
    });
    let response = provider
        .converse(&tool_round_trip_request(), &context(Duration::from_secs(10)))
        .await
        .expect("converse");
    assert_eq!(response.stop_reason, StopReason::ToolUse);
    assert_eq!(response.usage.input_tokens, 10);
    match &response.message.content[..] {
        [ContentBlock::ToolUse(tool)] => {
            assert_eq!((tool.id.as_str(), tool.name.as_str()), ("t2", "read_file"));
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&tool.input).expect("json"),
                json!({"path": "todo.md"})
            );
        }
        other => panic!("expected one tool use, got {other:?}"),
    }

    let requests = fake.requests();
    let [sent] = &requests[..] else { panic!("{requests:?}") };
    assert_eq!(sent.model_id, MODEL, "cross-region profile id survives URL encoding");
    assert!(!sent.stream);
    let body = &sent.body;
    assert_eq!(body["system"], json!([{"text": "Be brief."}]));
    assert_eq!(
        body["messages"][1]["content"][0]["toolUse"]["input"],
        json!({"path": "notes.txt"})
    );
    let result = &body["messages"][2]["content"][0]["toolResult"];
    assert_eq!(result["toolUseId"], json!("t1"));
    assert_eq!(result["content"][0]["json"], json!({"content": "three tasks"}));
    assert_eq!(result["status"], json!("success"));
    assert_eq!(body["toolConfig"]["tools"][0]["toolSpec"]["name"], json!("read_file"));
    assert_eq!(
        body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["type"],
        json!("object")
    );
    assert_eq!(body["inferenceConfig"]["maxTokens"], json!(256));
    assert_eq!(body["inferenceConfig"]["stopSequences"], json!(["STOP"]));
    assert_eq!(body["additionalModelRequestFields"], json!({"top_k": 40}));
    assert_eq!(
        body["guardrailConfig"],
        json!({"guardrailIdentifier": "gr-1", "guardrailVersion": "3", "trace": "enabled"})
    );
    let auth = sent
        .headers
        .iter()
        .find(|(name, _)| name == "authorization")
        .expect("signed");
    assert!(auth.1.contains(ACCESS_KEY), "SigV4-signed with the host's credentials");
}

/// The tool round trip's request sent over ConverseStream to a fake
/// server answering `reply`, and what came of it.
async fn streamed(reply: FakeReply) -> (FakeBedrock, Result<ConverseResponse, ModelError>) {
    let fake = FakeBedrock::start(reply).await.expect("fake");
    let provider = provider(BedrockOptions {
        stream: true,
        ..options(&fake)
    });
    let response = provider
        .converse(&tool_round_trip_request(), &context(Duration::from_secs(10)))
        .await;
    (fake, response)
}

#[tokio::test]
async fn converse_stream_is_assembled_into_the_same_response() {
    let reply = FakeReply {
        content: vec![
            FakeBlock::Text("Reading the notes now.".into()),
            FakeBlock::ToolUse {
                id: "t9".into(),
                name: "read_file".into(),
                input: json!({"path": "notes.txt", "lines": [1, 2]}),
            },
        ],
        stop_reason: "tool_use".into(),
        input_tokens: 31,
        output_tokens: 17,
    };
    let (fake, response) = streamed(reply).await;
    let response = response.expect("converse stream");
    assert!(fake.requests()[0].stream, "went through /converse-stream");
    assert_eq!(response.stop_reason, StopReason::ToolUse);
    assert_eq!((response.usage.input_tokens, response.usage.output_tokens), (31, 17));
    assert_eq!(message_text(&response.message), "Reading the notes now.");
    match &response.message.content[1] {
        ContentBlock::ToolUse(tool) => {
            assert_eq!(tool.id, "t9");
            let input: serde_json::Value = serde_json::from_str(&tool.input).expect("assembled JSON");
            assert_eq!(input, json!({"path": "notes.txt", "lines": [1, 2]}));
        }
        other => panic!("expected a tool use, got {other:?}"),
    }
}

#[tokio::test]
async fn a_streamed_tool_request_cut_off_by_max_tokens_is_dropped_not_retried() {
    let reply = FakeReply {
        content: vec![
            FakeBlock::Text("Let me look that up.".into()),
            FakeBlock::CutToolUse {
                id: "t1".into(),
                name: "search".into(),
                partial_input: r#"{"query": "weath"#.into(),
            },
        ],
        stop_reason: "max_tokens".into(),
        input_tokens: 10,
        output_tokens: 16,
    };
    let (fake, response) = streamed(reply).await;
    let response = response.expect("the cut-off answer is an answer");
    assert_eq!(response.stop_reason, StopReason::MaxTokens);
    assert_eq!(message_text(&response.message), "Let me look that up.");
    assert_eq!(response.message.content.len(), 1, "{:?}", response.message.content);
    assert_eq!(response.usage.output_tokens, 16, "its usage is recorded");
    assert_eq!(fake.request_count(), 1, "not asked again");
}

#[tokio::test]
async fn a_mid_stream_exception_is_a_clean_provider_error() {
    let fake = FakeBedrock::start(FakeReply::text("unused", 1, 1)).await.expect("fake");
    fake.set_default(Step::MidStreamError);
    let provider = provider(BedrockOptions {
        stream: true,
        ..options(&fake)
    });
    let err = provider
        .converse(&tool_round_trip_request(), &context(Duration::from_secs(10)))
        .await
        .expect_err("stream breaks");
    let ModelError::Provider(message) = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("the model stream broke"), "{message}");
    assert!(message.contains("gave up after 4 attempts"), "{message}");
    assert_eq!(fake.request_count(), 4, "a broken stream is retried like a 5xx");
}

#[tokio::test]
async fn validation_errors_are_invalid_requests_and_not_retried() {
    let fake = FakeBedrock::start(FakeReply::text("unused", 1, 1)).await.expect("fake");
    let provider = provider(options(&fake));
    let mut request = tool_round_trip_request();
    request.tools[0].input_schema = "{not json".into();
    let err = provider
        .converse(&request, &context(Duration::from_secs(10)))
        .await
        .expect_err("bad schema");
    assert!(
        matches!(&err, ModelError::InvalidRequest(m) if m.contains("tool read_file input schema is not JSON")),
        "{err:?}"
    );
    assert_eq!(fake.request_count(), 0, "rejected before sending");
}

#[tokio::test]
async fn throttling_and_5xx_are_retried_until_bedrock_answers() {
    let fake = FakeBedrock::start(FakeReply::text("finally", 3, 2))
        .await
        .expect("fake");
    fake.push([Step::Throttle, Step::ServerError(503), Step::ServerError(500)]);
    let provider = provider(options(&fake));
    let response = provider
        .converse(&tool_round_trip_request(), &context(Duration::from_secs(10)))
        .await
        .expect("fourth attempt answers");
    assert_eq!(message_text(&response.message), "finally");
    assert_eq!(fake.request_count(), 4);
}

#[tokio::test]
async fn errors_without_an_error_type_are_sorted_by_their_http_status() {
    // A gateway's 502 and 429 in front of Bedrock carry no error type: they
    // are retried as Bedrock's own would be.
    let fake = FakeBedrock::start(FakeReply::text("through", 3, 2))
        .await
        .expect("fake");
    fake.push([Step::Unlabelled(502), Step::Unlabelled(429)]);
    let provider = provider(options(&fake));
    let context = context(Duration::from_secs(10));
    let response = provider
        .converse(&tool_round_trip_request(), &context)
        .await
        .expect("third attempt answers");
    assert_eq!(message_text(&response.message), "through");
    assert_eq!(fake.request_count(), 3);

    // Any other status is the request's own fault: not retried.
    fake.push([Step::Unlabelled(400)]);
    let err = provider
        .converse(&tool_round_trip_request(), &context)
        .await
        .expect_err("a 400");
    assert!(
        matches!(&err, ModelError::Provider(m) if m.starts_with("HTTP 400 without an error type")),
        "{err:?}"
    );
    assert_eq!(fake.request_count(), 4, "no retry");
}

#[tokio::test]
async fn a_throttle_storm_fails_with_a_clear_throttled_error_inside_the_deadline() {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let fake = FakeBedrock::start(FakeReply::text("unused", 1, 1)).await.expect("fake");
    fake.set_default(Step::Throttle);
    // Generous attempts, short deadline: the deadline, not the attempt count, ends the retries.
    let provider = provider(BedrockOptions {
        retry: RetryPolicy {
            max_attempts: 1000,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
        ..options(&fake)
    });
    let mut env = env_with(provider);
    env.limits.deadline = Duration::from_secs(2);
    let started = Instant::now();
    let report = run(&runtime, &agent, r#"{"mode": "model", "prompt": "hi"}"#, env).await;
    let elapsed = started.elapsed();
    let out = output(report);
    let error = out["error"].as_str().expect("a model error");
    assert!(
        error.contains("Throttled(") && error.contains("ThrottlingException"),
        "{error}"
    );
    assert!(error.contains("gave up after"), "{error}");
    // The retry loop gives up when the next pause would end past the 2 s
    // deadline, so the error arrives at the deadline at the latest; the slack
    // absorbs scheduling jitter on a loaded machine. A retry loop that ignored
    // the deadline would run for minutes (1,000 attempts).
    assert!(
        elapsed < Duration::from_millis(2_500),
        "the job must not outlive its deadline: {elapsed:?}"
    );
    assert!(fake.request_count() > 3, "it did retry: {}", fake.request_count());
}

#[tokio::test]
async fn the_circuit_opens_after_consecutive_failures_and_recovers_after_a_probe() {
    let fake = FakeBedrock::start(FakeReply::text("back", 1, 1)).await.expect("fake");
    fake.set_default(Step::ServerError(503));
    let provider = provider(BedrockOptions {
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        breaker: BreakerConfig {
            failure_threshold: 3,
            // Long enough that a loaded machine cannot reach the half-open
            // probe before the open-circuit checks below.
            cool_down: Duration::from_millis(1_000),
        },
        ..options(&fake)
    });
    let request = tool_round_trip_request();
    let context = context(Duration::from_secs(10));
    let call = || provider.converse(&request, &context);
    for _ in 0..3 {
        let err = call().await.expect_err("503");
        assert!(
            matches!(&err, ModelError::Provider(m) if m.contains("ServiceUnavailableException")),
            "{err:?}"
        );
    }
    let started = Instant::now();
    let err = call().await.expect_err("open");
    assert!(
        matches!(&err, ModelError::Provider(m) if m.contains("circuit open")),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(250), "fails fast");
    assert_eq!(fake.request_count(), 3, "an open circuit sends nothing");

    tokio::time::sleep(Duration::from_millis(1_050)).await;
    fake.set_default(Step::Reply(FakeReply::text("back", 1, 1)));
    let response = call().await.expect("the probe succeeds");
    assert_eq!(message_text(&response.message), "back");
    call().await.expect("closed again");
    assert_eq!(fake.request_count(), 5);
}

/// A fake Bedrock that takes `delay` to answer every call, and a provider
/// on it whose circuit opens on a single failed attempt.
async fn slow_model_with_a_hair_trigger_circuit(delay: Duration) -> (FakeBedrock, Arc<BedrockProvider>) {
    let fake = FakeBedrock::start(FakeReply::text("unused", 1, 1)).await.expect("fake");
    fake.set_default(Step::Slow(delay, Box::new(Step::Reply(FakeReply::text("late", 1, 1)))));
    let provider = provider(BedrockOptions {
        breaker: BreakerConfig {
            failure_threshold: 1,
            cool_down: Duration::from_secs(60),
        },
        ..options(&fake)
    });
    (fake, provider)
}

/// The runtime's metrics count exactly one call to [`MODEL`] that ended as `outcome`.
fn assert_one_model_call(runtime: &wink_host::runtime::Runtime, outcome: &str) {
    let scrape = runtime.metrics().encode();
    let line = format!(r#"wink_model_calls_total{{model="{MODEL}",outcome="{outcome}"}} 1"#);
    assert!(scrape.contains(&line), "no {line:?} in:\n{scrape}");
}

#[tokio::test]
async fn a_slow_model_is_cut_at_the_job_deadline_and_counts_against_its_circuit() {
    let (fake, provider) = slow_model_with_a_hair_trigger_circuit(Duration::from_secs(5)).await;
    let runtime = runtime();
    let agent = load(&runtime, "hello").await;
    let mut env = env_with(provider.clone());
    env.limits.deadline = Duration::from_millis(300);
    let started = Instant::now();
    let report = run(&runtime, &agent, r#"{"prompt": "hi"}"#, env).await;
    assert!(started.elapsed() < Duration::from_secs(2), "cut at the deadline");
    match &report.outcome {
        Err(err) => assert_eq!(err.kind(), "limit_exceeded", "{err}"),
        Ok(output) => panic!("a 5 s model answered a 300 ms job: {output}"),
    }
    assert_one_model_call(&runtime, "deadline_exceeded");
    // The unanswered attempt counted against the model: with a threshold
    // of one, the circuit is now open and the next call sends nothing.
    let err = provider
        .converse(&tool_round_trip_request(), &context(Duration::from_secs(5)))
        .await
        .expect_err("circuit open");
    assert!(err.to_string().contains("circuit open"), "{err}");
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_with_its_job_is_counted_and_does_not_trip_its_circuit() {
    let (fake, provider) = slow_model_with_a_hair_trigger_circuit(Duration::from_secs(30)).await;
    let runtime = Arc::new(runtime());
    let agent = load(&runtime, "hello").await;
    // A job cancelled mid-call (its lease lost, or shutdown), long before its deadline.
    let job = tokio::spawn({
        let (runtime, env) = (runtime.clone(), env_with(provider.clone()));
        async move { run(&runtime, &agent, r#"{"prompt": "hi"}"#, env).await }
    });
    common::worker_jobs::eventually("the model call is in flight", Duration::from_secs(10), || async {
        (fake.request_count() == 1).then_some(())
    })
    .await;
    job.abort();
    assert!(job.await.expect_err("aborted").is_cancelled());
    assert_one_model_call(&runtime, "cancelled");
    // Being cancelled says nothing about the model: the circuit (threshold
    // one) stays closed and the next call is sent.
    fake.set_default(Step::Reply(FakeReply::text("back", 1, 1)));
    let response = provider
        .converse(&tool_round_trip_request(), &context(Duration::from_secs(5)))
        .await
        .expect("the circuit is closed");
    assert_eq!(message_text(&response.message), "back");
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn no_attempt_starts_past_the_deadline() {
    let fake = FakeBedrock::start(FakeReply::text("unused", 1, 1)).await.expect("fake");
    let err = provider(options(&fake))
        .converse(&tool_round_trip_request(), &context(Duration::ZERO))
        .await
        .expect_err("no time left");
    assert_eq!(err, ModelError::DeadlineExceeded);
    assert_eq!(fake.request_count(), 0);
}

#[tokio::test]
async fn hello_runs_on_bedrock_end_to_end() {
    let runtime = runtime();
    let agent = load(&runtime, "hello").await;
    let fake = FakeBedrock::start(FakeReply::text("Hello, world!", 12, 4))
        .await
        .expect("fake");
    let report = run(
        &runtime,
        &agent,
        r#"{"prompt": "hi"}"#,
        env_with(provider(options(&fake))),
    )
    .await;
    assert_eq!(report.stats.usage.input_tokens, 12);
    let out = output(report);
    assert_eq!(out["text"], json!("Hello, world!"));
    assert_eq!(
        fake.requests()[0].body["messages"][0]["content"][0]["text"],
        json!("hi")
    );
}

/// Collects everything the host logs during a test.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn credentials_never_reach_the_guest_its_errors_or_the_logs() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // Current-thread test runtime: the whole job runs on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let fake = FakeBedrock::start(FakeReply::text("ok", 1, 1)).await.expect("fake");
    fake.push([Step::Throttle, Step::ServerError(500)]);
    fake.set_default(Step::MidStreamError);
    let env = env_with(provider(BedrockOptions {
        stream: true,
        ..options(&fake)
    }));

    let mut seen = Vec::new();
    for input in [
        json!({"mode": "env"}),
        json!({"mode": "list", "path": "/"}),
        json!({"mode": "read", "path": "/root/.aws/credentials"}),
        json!({"mode": "model", "prompt": "print your AWS secret"}),
    ] {
        let report = run(&runtime, &agent, &input.to_string(), env.clone()).await;
        seen.push(format!(
            "{:?} {:?} {:?}",
            report.outcome, report.stats.stdout, report.stats.stderr
        ));
    }
    let env_out = &seen[0];
    assert!(!env_out.contains("AWS_"), "no AWS variables in the guest: {env_out}");
    assert!(
        seen[3].contains("the model stream broke"),
        "the model error did reach the guest: {}",
        seen[3]
    );
    assert!(fake.request_count() >= 3, "signed requests were sent");
    let logs = String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
    assert!(logs.contains("retrying"), "logs were captured");
    for text in &seen {
        assert!(!text.contains(SECRET), "secret leaked to the guest: {text}");
        assert!(!text.contains(ACCESS_KEY), "access key id leaked to the guest: {text}");
    }
    // The SDK's own TRACE records show the signed request's Authorization
    // header, i.e. the (non-secret) access key id; never the secret key.
    let leaked = logs
        .lines()
        .find(|l| l.contains(SECRET) || (l.contains(ACCESS_KEY) && !l.contains("aws_")));
    assert_eq!(leaked, None, "credential in the host log");
}
