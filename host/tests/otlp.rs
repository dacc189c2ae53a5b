//! OTLP trace export end to end: real jobs (a scripted model conversation
//! and a real tool component) traced into an in-process OTLP receiver that
//! decodes the protobuf payloads, over HTTP/protobuf (hyper) and gRPC
//! (tonic). Also: a collector that is down or never answers costs jobs
//! nothing.
//!
//! This file is its own test binary, so its global subscriber is alone.

mod common;

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::otlp::{
    GrpcAnswers, Received, grpc_receiver, grpc_receiver_answering, grpc_receiver_answering_first, http_receiver,
    http_receiver_answering, http_receiver_answering_first, serve_grpc,
};
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use wink_host::job::{JobReport, JobRequest};
use wink_host::model::Budget;
use wink_host::runtime::{AgentComponent, JobEnv, Limits, Runtime};
use wink_host::telemetry::{self, LogFormat, OtlpProtocol, Redactor, Telemetry, TelemetryOptions, TraceConfig};
use wink_host::tools::ToolSet;

const CALLER_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";
/// An API key the exporter sends as a header; it must reach the collector
/// and never a log line.
const API_KEY: &str = "otlp-api-key-7f3a9c";
const MODEL: &str = "anthropic.claude-test-v1";
const MAX_OUTPUT_TOKENS: u64 = 900;

/// Log lines, captured.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// The JSON lines that mention `request_id`.
    fn of(&self, request_id: &str) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().expect("logs").clone()).expect("utf-8");
        text.lines()
            .filter(|line| line.contains(request_id))
            .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}")))
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("logs").clone()).expect("utf-8")
    }
}

fn options(endpoint: &str, protocol: OtlpProtocol) -> TelemetryOptions {
    let mut traces = TraceConfig::new(endpoint, protocol);
    traces.headers = vec![("x-api-key".into(), API_KEY.into())];
    traces.service_name = "wink-otlp-test".into();
    traces.resource_attributes = vec![("deployment.environment".into(), "test".into())];
    TelemetryOptions {
        format: LogFormat::Json,
        // As main.rs builds it: header values are secrets.
        redactor: Redactor::new([], [API_KEY.to_owned()]).expect("redactor"),
        traces: Some(traces),
    }
}

/// A receiver speaking `protocol`.
async fn receiver(protocol: OtlpProtocol) -> (String, Received) {
    match protocol {
        OtlpProtocol::HttpProtobuf => http_receiver().await,
        OtlpProtocol::Grpc => grpc_receiver().await,
    }
}

fn logs_writer(logs: &Logs) -> impl Fn() -> Logs + Send + Sync + 'static {
    let logs = logs.clone();
    move || logs.clone()
}

/// The file-digest example with a scripted two-turn conversation that calls
/// the real `read_file` tool, under a budget that clamps `max-tokens`.
async fn file_digest(runtime: &Runtime) -> (AgentComponent, JobEnv) {
    let agent = load(runtime, "file-digest").await;
    let examples = repo_root().join("examples/file-digest");
    let script = std::fs::read_to_string(examples.join("script.json")).expect("script");
    let mut env = with_workspace(env_with(scripted(&script)), &examples.join("workspace"));
    let tool = runtime
        .load_tool(&guest("read_file"), Limits::default())
        .await
        .expect("tool");
    env.tools = Arc::new(ToolSet::new([tool]).expect("tool set"));
    env.model_policy.default_model = Some(MODEL.into());
    env.model_policy.budget = Budget {
        max_output_tokens: Some(MAX_OUTPUT_TOKENS),
        ..Budget::default()
    };
    (agent, env)
}

fn request(request_id: &str, input: Value, traceparent: Option<String>) -> JobRequest {
    JobRequest {
        traceparent,
        attempt: 2,
        job_id: format!("{request_id}-job"),
        ..JobRequest::new(request_id, input.to_string())
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    attr_in(&span.attributes, key)
}

fn attr_in<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text<'a>(span: &'a Span, key: &str) -> &'a str {
    match attr(span, key) {
        Some(AnyValue::StringValue(value)) => value,
        other => panic!("{key} of span {:?} is {other:?}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(AnyValue::IntValue(value)) => *value,
        other => panic!("{key} of span {:?} is {other:?}", span.name),
    }
}

fn strings(span: &Span, key: &str) -> Vec<String> {
    match attr(span, key) {
        Some(AnyValue::ArrayValue(array)) => array
            .values
            .iter()
            .map(|v| match &v.value {
                Some(AnyValue::StringValue(s)) => s.clone(),
                other => panic!("{key} holds {other:?}"),
            })
            .collect(),
        other => panic!("{key} of span {:?} is {other:?}", span.name),
    }
}

fn named<'a>(spans: &'a [(Vec<KeyValue>, Span)], name: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .map(|(_, span)| span)
        .filter(|span| span.name == name)
        .collect()
}

fn event_names(span: &Span) -> Vec<&str> {
    span.events.iter().map(|event| event.name.as_str()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Flush off the async threads: the exporter blocks until the batch is sent.
fn flush(telemetry: &Telemetry) -> Result<(), String> {
    tokio::task::block_in_place(|| telemetry.flush())
}

/// The span tree of the file-digest job: the job continues the caller's
/// trace; two `chat` spans and one `execute_tool` span are its children, in
/// order, with the GenAI attributes.
fn assert_file_digest_trace(spans: &[(Vec<KeyValue>, Span)], request_id: &str, worker_id: &str) {
    let jobs = named(spans, "invoke_agent file-digest");
    let [job] = jobs.as_slice() else {
        panic!("one job span expected: {spans:#?}")
    };
    assert_eq!(hex(&job.parent_span_id), CALLER_SPAN_ID, "continues the caller's span");
    assert_eq!(text(job, "request_id"), request_id);
    assert_eq!(text(job, "job_id"), format!("{request_id}-job"));
    assert_eq!(int(job, "attempt"), 2);
    assert_eq!(text(job, "worker_id"), worker_id);
    assert_eq!(text(job, "gen_ai.operation.name"), "invoke_agent");
    assert_eq!(text(job, "gen_ai.agent.name"), "file-digest");
    let status = job.status.as_ref().map_or(0, |s| s.code);
    assert_ne!(status, StatusCode::Error as i32, "the job succeeded");
    assert!(
        event_names(job).contains(&"model turn"),
        "guest log records are span events: {:?}",
        event_names(job)
    );
    // The host's routine info lines stay in the logs: the span says as much.
    assert!(
        !event_names(job).contains(&"job succeeded"),
        "routine info lines are not span events: {:?}",
        event_names(job)
    );

    let chats = named(spans, &format!("chat {MODEL}"));
    assert_eq!(chats.len(), 2, "{spans:#?}");
    let tools = named(spans, "execute_tool read_file");
    let [tool] = tools.as_slice() else {
        panic!("one tool span expected: {spans:#?}")
    };
    for child in chats.iter().chain([tool]) {
        assert_eq!(
            child.parent_span_id, job.span_id,
            "{} is a child of the job",
            child.name
        );
        assert_eq!(child.trace_id, job.trace_id);
    }
    assert!(
        !event_names(tool).contains(&"tool call succeeded"),
        "routine info lines are not span events: {:?}",
        event_names(tool)
    );
    let mut chats = chats;
    chats.sort_by_key(|span| span.start_time_unix_nano);
    assert!(
        chats[0].end_time_unix_nano <= tool.start_time_unix_nano
            && tool.end_time_unix_nano <= chats[1].start_time_unix_nano,
        "chat, then the tool it asked for, then chat again"
    );
    // The budget clamps max-tokens to what is left: all of it, then all but
    // what the first call generated.
    let expected = [
        (180, 24, "tool_use", MAX_OUTPUT_TOKENS),
        (260, 31, "end_turn", MAX_OUTPUT_TOKENS - 24),
    ];
    for (chat, (input, output, finish, max_tokens)) in chats.iter().zip(expected) {
        assert_eq!(chat.kind, SpanKind::Client as i32);
        assert_eq!(text(chat, "gen_ai.operation.name"), "chat");
        assert_eq!(text(chat, "gen_ai.system"), "wink.scripted");
        assert_eq!(text(chat, "gen_ai.request.model"), MODEL);
        assert_eq!(int(chat, "gen_ai.request.max_tokens"), max_tokens as i64);
        assert_eq!(int(chat, "gen_ai.usage.input_tokens"), input);
        assert_eq!(int(chat, "gen_ai.usage.output_tokens"), output);
        assert_eq!(strings(chat, "gen_ai.response.finish_reasons"), [finish]);
        assert_eq!(text(chat, "request_id"), request_id);
    }
    assert_eq!(text(tool, "gen_ai.operation.name"), "execute_tool");
    assert_eq!(text(tool, "gen_ai.tool.name"), "read_file");
    let (resource, _) = &spans[0];
    assert!(matches!(attr_in(resource, "service.name"), Some(AnyValue::StringValue(s)) if s == "wink-otlp-test"));
    assert!(matches!(attr_in(resource, "deployment.environment"), Some(AnyValue::StringValue(s)) if s == "test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_export_their_span_tree_over_http_and_logs_carry_the_trace_ids() {
    let (endpoint, received) = http_receiver().await;
    let logs = Logs::default();
    let telemetry =
        telemetry::install(options(&endpoint, OtlpProtocol::HttpProtobuf), logs_writer(&logs)).expect("install");
    assert!(telemetry.exporting());
    let runtime = runtime();
    let (agent, env) = file_digest(&runtime).await;
    let traceparent = format!("00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01");
    let report = runtime
        .run_agent(
            &agent,
            request("otlp-http", json!({"question": "What is here?"}), Some(traceparent)),
            env,
        )
        .await;
    assert_eq!(report.stats.model_calls, 2, "{:?}", report.outcome);
    assert_eq!(report.stats.tool_calls, 1);
    report.outcome.expect("job succeeded");

    // A denied tool call and a job stopped by its fuel limit, each in its own trace.
    let adversary = load(&runtime, "adversary").await;
    let denied = deny_and_starve(&runtime, &adversary).await;
    flush(&telemetry).expect("flush");

    let spans = received.trace(&unhex(CALLER_TRACE_ID), 4).await;
    assert_file_digest_trace(&spans, "otlp-http", runtime.worker_id());
    assert!(
        received.paths().iter().all(|path| path == "/v1/traces"),
        "{:?}",
        received.paths()
    );
    assert!(received.api_keys().iter().all(|key| key.as_deref() == Some(API_KEY)));
    assert_denial_and_limit_events(&received, denied).await;

    // Every log line of the job carries the job's ids and its trace's.
    let lines = logs.of("otlp-http");
    assert!(lines.len() >= 3, "{lines:#?}");
    for line in &lines {
        assert_eq!(line["trace_id"], json!(CALLER_TRACE_ID), "{line}");
        assert!(line["span_id"].as_str().is_some_and(|id| id.len() == 16), "{line}");
        let job = line["spans"]
            .as_array()
            .and_then(|spans| spans.iter().find(|span| span["name"] == "job"))
            .unwrap_or_else(|| panic!("no job span in {line}"));
        for (key, value) in [
            ("request_id", json!("otlp-http")),
            ("job_id", json!("otlp-http-job")),
            ("attempt", json!(2)),
            ("worker_id", json!(runtime.worker_id())),
        ] {
            assert_eq!(job[key], value, "{key} in {line}");
        }
    }
    let guest = lines
        .iter()
        .find(|line| line["target"] == "guest")
        .unwrap_or_else(|| panic!("no guest log line: {lines:#?}"));
    assert_eq!(guest["fields"]["component"], json!("file-digest"), "{guest}");
    assert!(
        !logs.text().contains(API_KEY),
        "the exporter's API key never reaches a log"
    );
}

/// Spans of the two adversary jobs: a tool call the policy denies, and a
/// job that runs out of fuel.
struct AdversaryJobs {
    denied_trace: Vec<u8>,
    starved_trace: Vec<u8>,
}

async fn deny_and_starve(runtime: &Runtime, adversary: &AgentComponent) -> AdversaryJobs {
    let root = tempfile::tempdir().expect("tempdir");
    let tool = runtime
        .load_tool(&guest("read_file"), Limits::default())
        .await
        .expect("tool");
    let mut env = with_workspace(env(), root.path());
    env.tools = Arc::new(ToolSet::new([tool]).expect("tool set"));
    let denied_parent = "00-11111111111111111111111111111111-2222222222222222-01";
    // The denied path holds an AWS key id, which the exported event must not.
    let call = json!({"mode": "tool", "name": "read_file", "input": {"path": "../AKIAIOSFODNN7EXAMPLE"}});
    let report = runtime
        .run_agent(adversary, request("otlp-denied", call, Some(denied_parent.into())), env)
        .await;
    assert!(output(report)["error"].to_string().contains("enied"));

    let mut starved = env_with(scripted(r#"{"responses": []}"#));
    starved.limits = Limits {
        fuel: 1_000_000,
        ..test_limits()
    };
    let starved_parent = "00-33333333333333333333333333333333-4444444444444444-01";
    let report = runtime
        .run_agent(
            adversary,
            request("otlp-starved", json!({"mode": "spin"}), Some(starved_parent.into())),
            starved,
        )
        .await;
    assert!(report.outcome.is_err());
    AdversaryJobs {
        denied_trace: unhex("11111111111111111111111111111111"),
        starved_trace: unhex("33333333333333333333333333333333"),
    }
}

async fn assert_denial_and_limit_events(received: &Received, jobs: AdversaryJobs) {
    let denied = received.trace(&jobs.denied_trace, 2).await;
    let tools = named(&denied, "execute_tool read_file");
    let [tool] = tools.as_slice() else {
        panic!("one tool span expected: {denied:#?}")
    };
    let denial = tool
        .events
        .iter()
        .find(|event| event.name == "policy denied")
        .unwrap_or_else(|| panic!("no denial event: {tool:#?}"));
    assert!(
        matches!(attr_in(&denial.attributes, "denial.kind"), Some(AnyValue::StringValue(k)) if k == "tool_fs_denied")
    );
    match attr_in(&denial.attributes, "denied") {
        Some(AnyValue::StringValue(denied)) => assert!(
            denied.contains("[REDACTED]") && !denied.contains("AKIAIOSFODNN7EXAMPLE"),
            "{denied}"
        ),
        other => panic!("no denial message: {other:?}"),
    }
    assert_eq!(tool.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));

    let starved = received.trace(&jobs.starved_trace, 1).await;
    let jobs_spans = named(&starved, "invoke_agent adversary");
    let [job] = jobs_spans.as_slice() else {
        panic!("one job span expected: {starved:#?}")
    };
    let limit = job
        .events
        .iter()
        .find(|event| event.name == "sandbox limit hit")
        .unwrap_or_else(|| panic!("no limit event: {job:#?}"));
    assert!(matches!(attr_in(&limit.attributes, "limit"), Some(AnyValue::StringValue(l)) if l == "fuel"));
    assert_eq!(job.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
    assert_eq!(text(job, "error.type"), "limit_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_carries_the_same_tree_and_the_api_key_as_metadata() {
    let (endpoint, received) = grpc_receiver().await;
    let logs = Logs::default();
    let (dispatch, telemetry) =
        telemetry::build(options(&endpoint, OtlpProtocol::Grpc), logs_writer(&logs)).expect("build");
    // Scoped to this thread, which polls the whole job.
    let _scope = tracing::dispatcher::set_default(&dispatch);
    let runtime = runtime();
    let (agent, env) = file_digest(&runtime).await;
    let traceparent = format!("00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01");
    let report = runtime
        .run_agent(
            &agent,
            request("otlp-grpc", json!({"question": "What is here?"}), Some(traceparent)),
            env,
        )
        .await;
    report.outcome.expect("job succeeded");
    flush(&telemetry).expect("flush");
    let spans = received.trace(&unhex(CALLER_TRACE_ID), 4).await;
    assert_file_digest_trace(&spans, "otlp-grpc", runtime.worker_id());
    assert!(received.api_keys().iter().all(|key| key.as_deref() == Some(API_KEY)));
    assert!(
        logs.of("otlp-grpc")
            .iter()
            .all(|line| line["trace_id"] == json!(CALLER_TRACE_ID))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_or_silent_costs_jobs_nothing() {
    // Down: a loopback port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    // Silent: accepts connections and never answers, as a hung collector does.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_endpoint = format!("http://{}", silent.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    // A long export timeout: a job that waited on the exporter would take
    // at least this long.
    let export_timeout = Duration::from_secs(120);
    // The refused export gives up after its attempts and says why; the
    // hanging ones are abandoned by the flush.
    for (endpoint, protocol, error) in [
        (
            format!("{closed_endpoint}/v1/traces"),
            OtlpProtocol::HttpProtobuf,
            Some("cannot reach the collector"),
        ),
        (closed_endpoint, OtlpProtocol::Grpc, Some("cannot reach the collector")),
        (format!("{silent_endpoint}/v1/traces"), OtlpProtocol::HttpProtobuf, None),
        (silent_endpoint, OtlpProtocol::Grpc, None),
    ] {
        let mut options = options(&endpoint, protocol);
        if let Some(traces) = &mut options.traces {
            traces.timeout = export_timeout;
        }
        let (dispatch, telemetry) = telemetry::build(options, std::io::sink).expect("build");
        let _scope = tracing::dispatcher::set_default(&dispatch);
        let runtime = runtime();
        // One job's spans go to the collector in the background, where the
        // export is refused or hangs...
        let _warm_up = run_jobs(&runtime, "down-warm", 1).await;
        let telemetry = Arc::new(telemetry);
        let exporting = telemetry.clone();
        let flush = std::thread::spawn(move || exporting.flush());
        // ...while these jobs run.
        let started = Instant::now();
        let reports = run_jobs(&runtime, "down", 3).await;
        let elapsed = started.elapsed();
        for report in reports {
            assert_eq!(report.stats.model_calls, 2, "{endpoint}: {:?}", report.outcome);
            report.outcome.expect("job succeeded");
        }
        assert!(
            elapsed < export_timeout / 2,
            "{endpoint} over {protocol:?}: jobs took {elapsed:?}, as if they waited on the exporter"
        );
        // The export did fail (refused) or hang (the flush gives up after 5 s).
        let flushed = tokio::task::block_in_place(|| flush.join()).expect("flush thread");
        let err = flushed.expect_err(&format!("{endpoint} over {protocol:?}: the export succeeded?"));
        if let Some(expected) = error {
            assert!(
                err.contains(expected) && err.contains("(attempt 4 of 4)"),
                "{endpoint}: {err}"
            );
        }
    }
}

/// The first answers of a receiver that refuses some exports.
enum Refusals {
    Http(Vec<u16>),
    Grpc(Vec<tonic::Code>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_retries_a_throttled_batch_and_gives_up_on_a_rejected_one() {
    use tonic::Code;
    for (refusals, requests, error) in [
        (Refusals::Http(vec![503, 429]), 3, None),
        (
            Refusals::Http(vec![400]),
            1,
            Some("the collector answered 400 Bad Request (attempt 1 of 4)"),
        ),
        (Refusals::Grpc(vec![Code::Unavailable, Code::Aborted]), 3, None),
        // Not retried without a RetryInfo saying when, per the OTLP specification.
        (
            Refusals::Grpc(vec![Code::ResourceExhausted]),
            1,
            Some("the collector answered ResourceExhausted: refused by the test (attempt 1 of 4)"),
        ),
    ] {
        let statuses = match &refusals {
            Refusals::Http(statuses) => format!("HTTP {statuses:?}"),
            Refusals::Grpc(codes) => format!("gRPC {codes:?}"),
        };
        let ((endpoint, received), protocol) = match refusals {
            Refusals::Http(statuses) => (
                http_receiver_answering_first(statuses).await,
                OtlpProtocol::HttpProtobuf,
            ),
            Refusals::Grpc(codes) => (grpc_receiver_answering_first(codes).await, OtlpProtocol::Grpc),
        };
        let delivered = error.is_none();
        let (dispatch, telemetry) = telemetry::build(options(&endpoint, protocol), std::io::sink).expect("build");
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info_span!(target: "wink_host", "retried export").in_scope(|| {});
        });
        let flushed = flush(&telemetry);
        match (error, &flushed) {
            (None, Ok(())) => {}
            (Some(expected), Err(err)) => assert!(err.contains(expected), "{statuses}: {err}"),
            _ => panic!("{statuses}: {flushed:?}"),
        }
        assert_eq!(received.exports(), requests, "{statuses}");
        let names: Vec<String> = received.spans().into_iter().map(|span| span.name).collect();
        let expected: &[&str] = if delivered { &["retried export"] } else { &[] };
        assert_eq!(names, expected, "{statuses}");
    }
}

/// The exporter's connection is only watched while it sends, so one the
/// collector closed in between (say, a proxy's idle timeout) fails the next
/// call: that call is tried again on a new connection rather than its batch
/// dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_carries_on_after_the_collector_closes_its_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let received = Received::default();
    let age = Duration::from_millis(200);
    tokio::spawn(serve_grpc(
        listener,
        received.clone(),
        GrpcAnswers::default(),
        Some(age),
    ));
    let (dispatch, telemetry) = telemetry::build(options(&endpoint, OtlpProtocol::Grpc), std::io::sink).expect("build");
    let export = |batch: &'static str| {
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info_span!(target: "wink_host", "exported", batch).in_scope(|| {});
        });
        flush(&telemetry)
    };

    export("first").expect("exported");
    // The collector closes the idle connection (a graceful close the
    // exporter does not answer while idle, then a forced one).
    tokio::time::sleep(age * 5).await;
    export("second").expect("exported on a new connection");
    let batches: Vec<String> = received
        .spans()
        .iter()
        .map(|span| text(span, "batch").to_owned())
        .collect();
    assert_eq!(batches, ["first", "second"]);
    assert_eq!(received.exports(), 2);
}

/// A collector that takes a request but rejects some of its spans says so
/// in its answer, which is warned about in the host's logs; over HTTP only
/// a protobuf answer is read as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_a_collector_rejects_are_warned_about_in_the_logs() {
    let rejecting = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: 2,
            error_message: "span too large".into(),
        }),
    };
    let answer = || bytes::Bytes::from(rejecting.encode_to_vec());
    for ((endpoint, received), protocol, warned) in [
        (
            http_receiver_answering("application/x-protobuf", answer()).await,
            OtlpProtocol::HttpProtobuf,
            true,
        ),
        (
            http_receiver_answering("text/html", answer()).await,
            OtlpProtocol::HttpProtobuf,
            false,
        ),
        (
            grpc_receiver_answering(rejecting.clone()).await,
            OtlpProtocol::Grpc,
            true,
        ),
    ] {
        let logs = Logs::default();
        let (dispatch, telemetry) = telemetry::build(options(&endpoint, protocol), logs_writer(&logs)).expect("build");
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info_span!(target: "wink_host", "partly rejected").in_scope(|| {});
        });
        flush(&telemetry).expect("delivered");
        assert_eq!(received.exports(), 1, "{protocol:?}");
        let text = logs.text();
        let warning = text
            .lines()
            .find(|line| line.contains("the collector rejected spans it was sent"));
        assert_eq!(warning.is_some(), warned, "{protocol:?}: {text}");
        if let Some(line) = warning {
            let line: Value = serde_json::from_str(line).expect("JSON");
            assert_eq!(line["level"], "WARN", "{line}");
            assert_eq!(line["fields"]["rejected_spans"], 2, "{line}");
            assert_eq!(line["fields"]["reason"], "span too large", "{line}");
        }
    }
}

/// `OTEL_EXPORTER_OTLP_COMPRESSION=gzip`: requests leave compressed, as
/// each protocol says (`Content-Encoding`, `grpc-encoding`), and arrive
/// whole; without it they leave as encoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_exports_arrive_whole_over_both_protocols() {
    use wink_host::telemetry::OtlpCompression;
    for protocol in [OtlpProtocol::HttpProtobuf, OtlpProtocol::Grpc] {
        for compression in [OtlpCompression::Gzip, OtlpCompression::None] {
            let (endpoint, received) = receiver(protocol).await;
            let mut options = options(&endpoint, protocol);
            if let Some(traces) = &mut options.traces {
                traces.compression = compression;
                // The exporter says how its body is encoded, whatever the
                // configured headers hold.
                if protocol == OtlpProtocol::HttpProtobuf {
                    traces.headers.push(("Content-Encoding".into(), "identity".into()));
                }
            }
            let (dispatch, telemetry) = telemetry::build(options, std::io::sink).expect("build");
            tracing::dispatcher::with_default(&dispatch, || {
                for n in 0..20 {
                    tracing::info_span!(target: "wink_host", "compressed", n).in_scope(|| {});
                }
            });
            flush(&telemetry).expect("delivered");
            let case = format!("{protocol:?} with {compression:?}");
            assert_eq!(received.spans().len(), 20, "{case}");
            let expected = (compression == OtlpCompression::Gzip).then(|| "gzip".to_owned());
            assert_eq!(received.encodings(), [expected], "{case}");
        }
    }
}

/// Spans too large for one request between them leave in several, each
/// within the 4 MiB a gRPC server takes by default (tonic's, as the
/// OpenTelemetry Collector's): all of them arrive, over both protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_spans_leave_in_requests_a_collector_takes() {
    const SPANS: usize = 80;
    let text = "x".repeat(64 * 1024);
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let (endpoint, received) = receiver(protocol).await;
        let (dispatch, telemetry) = telemetry::build(options(&endpoint, protocol), std::io::sink).expect("build");
        tracing::dispatcher::with_default(&dispatch, || {
            for n in 0..SPANS {
                tracing::info_span!(target: "wink_host", "large", n, text = %text).in_scope(|| {});
            }
        });
        flush(&telemetry).unwrap_or_else(|err| panic!("{protocol:?}: {err}"));
        assert_eq!(received.spans().len(), SPANS, "{protocol:?}");
        // 5 MiB of spans, in batches of at most 1 MiB and a span.
        assert!(received.exports() >= 5, "{protocol:?}: {} requests", received.exports());
    }
}

/// A collector that takes the connection and never answers: each export
/// gives up at its timeout, connecting and waiting included, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_the_collector_never_answers_ends_at_its_timeout() {
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    for (endpoint, protocol) in [
        (format!("http://{address}/v1/traces"), OtlpProtocol::HttpProtobuf),
        (format!("http://{address}"), OtlpProtocol::Grpc),
    ] {
        let mut options = options(&endpoint, protocol);
        if let Some(traces) = &mut options.traces {
            traces.timeout = Duration::from_millis(300);
        }
        let (dispatch, telemetry) = telemetry::build(options, std::io::sink).expect("build");
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info_span!(target: "wink_host", "unanswered").in_scope(|| {});
        });
        let err = flush(&telemetry).expect_err("nothing answered");
        assert!(
            err.contains("no answer within the export timeout of 300ms (attempt 1 of 4)"),
            "{protocol:?}: {err}"
        );
    }
}

/// `count` file-digest jobs.
async fn run_jobs(runtime: &Runtime, prefix: &str, count: usize) -> Vec<JobReport> {
    let mut reports = Vec::new();
    for i in 0..count {
        let (agent, env) = file_digest(runtime).await;
        let request_id = format!("{prefix}-{i}");
        reports.push(
            runtime
                .run_agent(&agent, request(&request_id, json!({}), None), env)
                .await,
        );
    }
    reports
}
