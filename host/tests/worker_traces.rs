//! The worker's traces, exported over OTLP/HTTP to an in-process receiver
//! that decodes the protobuf: a delivery continues the envelope's
//! `traceparent`, and the job runs inside it.
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
async fn a_delivery_continues_the_producers_trace_and_the_job_runs_inside_it() {
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

    // Most producers send no traceparent: the delivery starts a trace.
    let untraced = Envelope::new("untraced-1", guest("hello").to_str().expect("path"));
    mailbox
        .send(&untraced.request_id, Bytes::from(untraced.to_bytes()))
        .await
        .expect("send");

    let give_up = Instant::now() + Duration::from_secs(30);
    while mailbox.reply("traced-1").await.expect("reply").is_none()
        || mailbox.reply("untraced-1").await.expect("reply").is_none()
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
    let process = one(&trace, "process jobs");
    assert_eq!(
        hex(&process.parent_span_id),
        CALLER_SPAN_ID,
        "continues the producer's span"
    );
    assert_eq!(process.kind, SpanKind::Consumer as i32);
    for (key, value) in [
        ("request_id", "traced-1"),
        ("attempt", "1"),
        ("worker_id", "traced"),
        ("messaging.destination.name", "jobs"),
        ("messaging.operation.type", "process"),
    ] {
        assert_eq!(text(process, key).as_deref(), Some(value), "{key}: {process:#?}");
    }
    let job = one(&trace, "invoke_agent hello");
    assert_eq!(
        job.parent_span_id, process.span_id,
        "the job is a child of its delivery"
    );
    assert_eq!(text(job, "job_id"), text(process, "job_id"));
    assert_eq!(
        text(job, "worker_id").as_deref(),
        Some("traced"),
        "the job span names the worker's own id, not the runtime's default"
    );
    let chat = trace.iter().find(|s| s.name.starts_with("chat")).expect("chat span");
    assert_eq!(chat.parent_span_id, job.span_id);

    let poisoned: Vec<Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == POISON_TRACE_ID)
        .cloned()
        .collect();
    let process = one(&poisoned, "process jobs");
    assert_eq!(text(process, "error.type").as_deref(), Some("component_unreadable"));
    assert!(
        process.events.iter().any(|e| e.name == "message dead-lettered"),
        "{process:#?}"
    );

    let started = spans
        .iter()
        .find(|s| s.name == "process jobs" && text(s, "request_id").as_deref() == Some("untraced-1"))
        .expect("the delivery of a job without a traceparent is exported");
    assert!(started.parent_span_id.is_empty(), "a new trace: {started:#?}");
    assert!(
        spans
            .iter()
            .any(|s| s.name == "invoke_agent hello" && s.trace_id == started.trace_id),
        "its job is in its trace"
    );
    telemetry.shutdown().expect("shutdown");
}
