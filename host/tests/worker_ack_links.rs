//! An ack batch exported as a span links every exported job it settled: a
//! batch holds no more jobs with sampled spans than a span keeps links
//! (`OTEL_SPAN_LINK_COUNT_LIMIT`), past which the SDK would drop them. Jobs
//! whose spans are not sampled take no link, so batches hold more of them.
//!
//! Its own test binary, so its global subscriber is alone.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::otlp::http_receiver;
use common::*;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use wink_host::mailbox::{Envelope, Mailbox, MemoryMailbox};
use wink_host::policy::HumanDuration;
use wink_host::telemetry::{self, LogFormat, OtlpProtocol, Redactor, TelemetryOptions, TraceConfig};
use wink_host::worker::{JobResources, ReplyRoutes, WorkerConfig};

const LINKS_PER_SPAN: usize = 4;
/// Jobs whose spans are exported; as many again come with a `traceparent`
/// whose caller did not sample, so their spans are not.
const JOBS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_job_is_linked_from_an_ack_span_however_many_finish_together() {
    let (endpoint, received) = http_receiver().await;
    let mut traces = TraceConfig::new(endpoint, OtlpProtocol::HttpProtobuf);
    traces.max_links_per_span = LINKS_PER_SPAN;
    let telemetry = telemetry::install(
        TelemetryOptions {
            format: LogFormat::Json,
            redactor: Redactor::new([], []).expect("redactor"),
            traces: Some(traces),
        },
        std::io::sink,
    )
    .expect("telemetry");
    let running = worker_jobs::Running::start(
        runtime(),
        Arc::new(MemoryMailbox::new("jobs")),
        WorkerConfig {
            concurrency: 2 * JOBS,
            ack_batch: 256,
            // The jobs finish within one linger, so without the cap they would
            // share one batch (unless the machine ran them seconds apart).
            ack_linger: HumanDuration(Duration::from_secs(2)),
            poll_wait: HumanDuration(Duration::from_millis(50)),
            ..WorkerConfig::default()
        },
        JobResources::default(),
        ReplyRoutes::registered_only(),
    );
    let mailbox = running.mailbox.clone();
    let agent = guest("trivial");
    let jobs: Vec<(String, Bytes)> = (0..2 * JOBS)
        .map(|i| {
            let mut job = Envelope::new(format!("job-{i}"), agent.to_str().expect("path"));
            if i % 2 == 1 {
                job.traceparent = Some(format!("00-{:032x}-{:016x}-00", i + 1, i + 1));
            }
            (job.request_id.clone(), Bytes::from(job.to_bytes()))
        })
        .collect();
    for sent in mailbox.send_batch(&jobs).await.expect("send") {
        sent.expect("sent");
    }

    let give_up = Instant::now() + Duration::from_secs(30);
    for (request_id, _) in &jobs {
        while mailbox.reply(request_id).await.expect("reply").is_none() {
            assert!(Instant::now() < give_up, "{request_id} was not answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    running.stop().await;
    tokio::task::block_in_place(|| telemetry.flush()).expect("flush");

    let spans = received.spans();
    let job_spans: HashSet<Vec<u8>> = spans
        .iter()
        .filter(|span| span.name == "invoke_agent trivial")
        .map(|span| span.span_id.clone())
        .collect();
    assert_eq!(job_spans.len(), JOBS, "{spans:#?}");
    let acks: Vec<_> = spans.iter().filter(|span| span.name == "ack jobs").collect();
    let mut linked = HashSet::new();
    let mut counts = Vec::new();
    for ack in &acks {
        assert_eq!(ack.dropped_links_count, 0, "{ack:#?}");
        assert!(ack.links.len() <= LINKS_PER_SPAN, "{ack:#?}");
        let count = ack
            .attributes
            .iter()
            .find(|kv| kv.key == "messaging.batch.message_count")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::IntValue(count) => Some(*count),
                _ => None,
            });
        let count = count.expect("messaging.batch.message_count");
        assert!(count >= ack.links.len() as i64, "{ack:#?}");
        counts.push(count);
        linked.extend(ack.links.iter().map(|link| link.span_id.clone()));
    }
    assert_eq!(linked, job_spans, "every exported job linked once: {acks:#?}");
    assert_eq!(
        counts.iter().sum::<i64>(),
        2 * JOBS as i64,
        "every job acked once: {acks:#?}"
    );
    assert!(
        counts.iter().any(|&count| count > LINKS_PER_SPAN as i64),
        "unsampled jobs fill batches past the links: {counts:?}"
    );
}
