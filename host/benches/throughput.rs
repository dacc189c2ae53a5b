//! `cargo xtask bench throughput`: trivial agent jobs end to end through the
//! worker: enqueue, claim, run in the sandbox, reply, ack.
//!
//! Per case, a producer task enqueues every job (envelopes built before the
//! clock starts) while one worker at concurrency N drains the queue; the
//! clock stops when the last reply is acked. Every reply is then checked.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use wink_host::mailbox::{Envelope, Mailbox, MemoryMailbox};
use wink_host::runtime::{Runtime, RuntimeConfig};
use wink_host::worker::{JobResources, ReplyRoutes, Worker, WorkerConfig};

const CONCURRENCY: [usize; 3] = [1, 8, 64];
const WARMUP_JOBS: usize = 2_000;

/// Jobs per case (`WINK_BENCH_JOBS` overrides).
fn jobs_per_case() -> usize {
    std::env::var("WINK_BENCH_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000)
}

fn main() {
    let otel = std::env::var("WINK_BENCH_OTEL").is_ok_and(|v| v == "1");
    if otel {
        // Hook: initialise OTLP trace export here once telemetry provides it,
        // so the same scenario measures the cost of exporting a span per job.
        eprintln!("throughput: WINK_BENCH_OTEL=1, but this build has no trace export to initialise; running without");
    }
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let jobs = jobs_per_case();
    let results: Vec<_> = CONCURRENCY
        .iter()
        .map(|&concurrency| {
            let mailbox = Arc::new(MemoryMailbox::new("bench"));
            let result = tokio.block_on(measure("memory", mailbox, concurrency, jobs));
            eprintln!("throughput: {result}");
            result
        })
        .collect();
    common::write_report(
        "throughput",
        json!({
            "scenario": "throughput",
            "what": "trivial agent jobs end to end through one worker: enqueue, claim, run in the sandbox, reply, ack",
            "agent": "trivial (echoes its input, no model or tool calls)",
            "results": results,
            "target": {"memory_jobs_per_s": 40_000, "redis_jobs_per_s": 20_000},
            "otel_export": false,
            "machine": common::machine(),
        }),
    );
}

fn envelopes(prefix: &str, agent: &str, count: usize) -> Vec<(String, Bytes)> {
    (0..count)
        .map(|i| {
            let mut envelope = Envelope::new(format!("{prefix}-{i}"), agent);
            envelope.input = json!({"n": i});
            (envelope.request_id.clone(), Bytes::from(envelope.to_bytes()))
        })
        .collect()
}

async fn measure(name: &str, mailbox: Arc<dyn Mailbox>, concurrency: usize, jobs: usize) -> serde_json::Value {
    let runtime = Runtime::new(&RuntimeConfig {
        max_concurrent_jobs: concurrency as u32,
        max_concurrent_tool_calls: 1,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let config = WorkerConfig {
        worker_id: Some("bench".into()),
        concurrency,
        health_port: 0,
        ..WorkerConfig::default()
    };
    let worker = Worker::new(
        runtime,
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
    let agent = common::guest("trivial");
    let agent = agent.to_str().expect("path");

    let warmup = envelopes(&format!("warm-{concurrency}"), agent, WARMUP_JOBS);
    drain(&worker, mailbox.as_ref(), warmup, 0).await;
    let measured = envelopes(&format!("job-{concurrency}"), agent, jobs);
    let ids: Vec<String> = measured.iter().map(|(id, _)| id.clone()).collect();
    let elapsed = drain(&worker, mailbox.as_ref(), measured, WARMUP_JOBS as u64).await;

    for id in &ids {
        let reply = mailbox.reply(id).await.expect("reply").expect("every job is answered");
        assert!(reply.starts_with(b"{\"version\":1"), "{id}");
    }
    worker.shutdown();
    let summary = running.await.expect("worker task").expect("worker run");
    assert_eq!(
        summary.failed + summary.dead_lettered + summary.retried,
        0,
        "{summary:?}"
    );
    let seconds = elapsed.as_secs_f64();
    json!({
        "mailbox": name,
        "concurrency": concurrency,
        "jobs": jobs,
        "seconds": common::round(seconds),
        "jobs_per_s": (jobs as f64 / seconds).round(),
        "us_per_job": common::round(seconds * 1e6 / jobs as f64),
    })
}

/// Enqueue `jobs` from a producer task while the worker drains them; the
/// time until the worker has acked all of them (`done_before` were acked earlier).
async fn drain(worker: &Worker, mailbox: &dyn Mailbox, jobs: Vec<(String, Bytes)>, done_before: u64) -> Duration {
    let total = done_before + jobs.len() as u64;
    let started = Instant::now();
    let producer = async {
        for (id, payload) in jobs {
            mailbox.send(&id, payload).await.expect("send");
        }
    };
    let finished = async {
        while worker.summary().succeeded < total {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    };
    tokio::join!(producer, finished);
    started.elapsed()
}
