//! The worker's traces, exported over OTLP/HTTP to an in-process receiver
//! that decodes the protobuf: a delivery's span continues the envelope's
//! `traceparent` and is the job's span too.
//!
//! Its own test binary, so its global subscriber is alone.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::otlp::http_receiver;
use common::*;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use wink_host::mailbox::{Envelope, Mailbox, MemoryMailbox};
use wink_host::telemetry::{self, LogFormat, OtlpProtocol, Redactor, TelemetryOptions, TraceConfig};
use wink_host::worker::{JobResources, ReplyRoutes, Worker, WorkerConfig};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";
const POISON_TRACE_ID: &str = "5cf92f3577b34da6a3ce929d0e0e4737";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(value) => Some(value.clone()),
            AnyValue::IntValue(value) => Some(value.to_string()),
            _ => None,
        })
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    let [span] = found.as_slice() else {
        panic!("one {name} span expected: {spans:#?}")
    };
    span
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_continues_the_producers_trace_in_one_span_that_the_job_runs_in() {
    let (endpoint, received) = http_receiver().await;
    let telemetry = telemetry::install(
        TelemetryOptions {
            format: LogFormat::Json,
            redactor: Redactor::new([], []).expect("redactor"),
            traces: Some(TraceConfig::new(endpoint, OtlpProtocol::HttpProtobuf)),
        },
        std::io::sink,
    )
    .expect("telemetry");
    let mailbox = Arc::new(MemoryMailbox::new("jobs"));
    let config = WorkerConfig {
        worker_id: Some("traced".into()),
        poll_wait: wink_host::policy::HumanDuration(Duration::from_millis(50)),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(
        runtime(),
        mailbox.clone(),
        config,
        JobResources::default(),
        ReplyRoutes::registered_only(),
    )
    .expect("worker");
    let running = tokio::spawn({
        let worker = worker.clone();
        async move { worker.run().await }
    });

    let mut job = Envelope::new("traced-1", guest("hello").to_str().expect("path"));
    job.traceparent = Some(format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01"));
    mailbox
        .send(&job.request_id, Bytes::from(job.to_bytes()))
        .await
        .expect("send");
    let mut poison = Envelope::new("poison-1", "/no/such/agent.wasm");
    poison.traceparent = Some(format!("00-{POISON_TRACE_ID}-{CALLER_SPAN_ID}-01"));
    mailbox
        .send(&poison.request_id, Bytes::from(poison.to_bytes()))
        .await
        .expect("send");

    // A job that fails as it runs: its span says so once.
    let mut trap = Envelope::new("trap-1", guest("adversary").to_str().expect("path"));
    trap.input = serde_json::json!({"mode": "trap"});
    mailbox
        .send(&trap.request_id, Bytes::from(trap.to_bytes()))
        .await
        .expect("send");

    // Most producers send no traceparent: the delivery starts a trace.
    let untraced = Envelope::new("untraced-1", guest("hello").to_str().expect("path"));
    mailbox
        .send(&untraced.request_id, Bytes::from(untraced.to_bytes()))
        .await
        .expect("send");

    let give_up = Instant::now() + Duration::from_secs(30);
    while mailbox.reply("traced-1").await.expect("reply").is_none()
        || mailbox.reply("untraced-1").await.expect("reply").is_none()
        || mailbox.reply("trap-1").await.expect("reply").is_none()
        || mailbox.depth().await.expect("depth").dead < 1
    {
        assert!(Instant::now() < give_up, "the jobs were not finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.shutdown();
    running.await.expect("task").expect("run");
    tokio::task::block_in_place(|| telemetry.flush()).expect("flush");

    let spans = received.spans();
    let trace: Vec<Span> = spans.iter().filter(|s| hex(&s.trace_id) == TRACE_ID).cloned().collect();
    let job = one(&trace, "invoke_agent hello");
    assert_eq!(
        hex(&job.parent_span_id),
        CALLER_SPAN_ID,
        "continues the producer's span"
    );
    assert_eq!(job.kind, SpanKind::Consumer as i32);
    for (key, value) in [
        ("request_id", "traced-1"),
        ("attempt", "1"),
        ("worker_id", "traced"),
        ("messaging.destination.name", "jobs"),
        ("messaging.operation.type", "process"),
        ("gen_ai.operation.name", "invoke_agent"),
        ("gen_ai.agent.name", "hello"),
    ] {
        assert_eq!(text(job, key).as_deref(), Some(value), "{key}: {job:#?}");
    }
    assert!(text(job, "job_id").is_some(), "{job:#?}");
    assert!(
        trace
            .iter()
            .all(|s| s.span_id == job.span_id || s.parent_span_id == job.span_id),
        "the job is one span, its calls its children: {trace:#?}"
    );
    let chat = trace.iter().find(|s| s.name.starts_with("chat")).expect("chat span");
    assert_eq!(chat.parent_span_id, job.span_id);

    // The claim and the ack serve many jobs at once: spans of their own,
    // linked to the jobs.
    let claims: Vec<&Span> = spans.iter().filter(|s| s.name == "claim jobs").collect();
    let [claim] = job.links.as_slice() else {
        panic!("the job links to the claim that delivered it: {job:#?}")
    };
    let claim = claims
        .iter()
        .find(|s| s.span_id == claim.span_id && s.trace_id == claim.trace_id)
        .unwrap_or_else(|| panic!("the claim span the job links to: {claims:#?}"));
    assert_eq!(claim.kind, SpanKind::Client as i32);
    for (key, value) in [
        ("messaging.operation.type", "receive"),
        ("messaging.operation.name", "claim"),
        ("messaging.destination.name", "jobs"),
    ] {
        assert_eq!(text(claim, key).as_deref(), Some(value), "{key}: {claim:#?}");
    }
    assert!(claim.start_time_unix_nano <= job.start_time_unix_nano, "{claim:#?}");
    let ack = spans
        .iter()
        .find(|s| {
            s.name == "ack jobs"
                && s.links
                    .iter()
                    .any(|l| l.span_id == job.span_id && l.trace_id == job.trace_id)
        })
        .unwrap_or_else(|| panic!("an ack span links to the job: {spans:#?}"));
    assert_eq!(ack.kind, SpanKind::Client as i32);
    assert_eq!(text(ack, "messaging.operation.type").as_deref(), Some("settle"));
    assert!(
        text(ack, "messaging.batch.message_count").is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n >= 1)),
        "{ack:#?}"
    );
    assert!(
        !spans
            .iter()
            .any(|s| s.name == "claim jobs" && text(s, "messaging.batch.message_count").as_deref() == Some("0")),
        "empty claims leave no span"
    );

    let poisoned: Vec<Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == POISON_TRACE_ID)
        .cloned()
        .collect();
    let unreadable = one(&poisoned, "invoke_agent agent");
    assert_eq!(text(unreadable, "error.type").as_deref(), Some("component_unreadable"));
    assert!(
        unreadable.events.iter().any(|e| e.name == "message dead-lettered"),
        "{unreadable:#?}"
    );

    let trapped = spans
        .iter()
        .find(|s| text(s, "request_id").as_deref() == Some("trap-1"))
        .expect("the failed job's span");
    assert_eq!(text(trapped, "error.type").as_deref(), Some("trap"), "{trapped:#?}");
    for span in &spans {
        let mut keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
        keys.sort_unstable();
        let count = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), count, "each attribute once: {span:#?}");
    }

    let started = spans
        .iter()
        .find(|s| s.name == "invoke_agent hello" && text(s, "request_id").as_deref() == Some("untraced-1"))
        .expect("the job of a delivery without a traceparent is exported");
    assert!(started.parent_span_id.is_empty(), "a new trace: {started:#?}");
    assert!(
        spans
            .iter()
            .any(|s| s.name.starts_with("chat") && s.parent_span_id == started.span_id),
        "its model call is its child"
    );
    telemetry.shutdown().expect("shutdown");
}
