//! `cargo xtask bench spans`: what a job's telemetry costs the host by
//! itself, without the sandbox, the mailbox or a second core's noise in the
//! way.
//!
//! One thread records, in a loop, what `wink-host` records per job: the
//! worker's job span, with its real fields, and the `job succeeded` line;
//! and, when spans are exported and `WINK_TRACE_MAILBOX_SPANS` does not
//! turn them off, a claim span and an ack span linked to the job's, as
//! when each claim and each ack batch serves one job (a worker's steady
//! state once its jobs end one at a time).
//! It runs with JSON logs alone (to a sink), then with OTLP trace export
//! too, in alternating rounds, and reports the host's CPU time per job for
//! each: the recording thread's and the exporter's threads', that is the
//! process's less the endpoint's (an in-process endpoint on a thread of its
//! own that reads and drops each request). The difference is what export
//! adds to each job.
//!
//! `WINK_BENCH_JOBS` (default 200,000 per run) and `WINK_BENCH_ROUNDS`
//! (default 7) size the run. The export reads the `OTEL_*` variables as
//! `wink-host` does, all but the endpoint: `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`
//! measures gRPC export.

#[path = "common/collector.rs"]
mod collector;
mod common;

use std::time::{Duration, Instant};

use collector::CountingCollector;
use serde_json::json;
use wink_host::telemetry::{self, BatchOperation, BatchSpans, LogFormat, Redactor, TelemetryOptions};

fn main() {
    wink_host::allocator::tune();
    let jobs = common::env_usize("WINK_BENCH_JOBS", 200_000);
    let rounds = common::env_usize("WINK_BENCH_ROUNDS", 7);
    let collector = CountingCollector::start();
    let build = |traces| {
        let options = TelemetryOptions {
            format: LogFormat::Json,
            redactor: Redactor::new([], []).expect("redactor"),
            traces,
        };
        telemetry::build(options, std::io::sink).expect("telemetry")
    };
    let (logs, logs_telemetry) = build(None);
    let export_config = collector.trace_config();
    let export_protocol = export_config.protocol.as_str();
    let mailbox_spans = export_config.mailbox_spans;
    let (export, export_telemetry) = build(Some(export_config));
    let host_cpu = || common::process_cpu_time().saturating_sub(collector.cpu_time());
    let run = |dispatch: &tracing::Dispatch, flush: &dyn Fn()| {
        tracing::dispatcher::with_default(dispatch, || record_jobs(jobs / 10));
        flush();
        let before = host_cpu();
        let started = Instant::now();
        tracing::dispatcher::with_default(dispatch, || record_jobs(jobs));
        let wall = started.elapsed();
        // The export's background work for these jobs counts too.
        flush();
        Cost {
            cpu_ns: per_job_ns(host_cpu().saturating_sub(before), jobs),
            wall_ns: per_job_ns(wall, jobs),
        }
    };
    let no_flush = || {};
    let export_flush = || {
        if let Err(err) = export_telemetry.flush() {
            eprintln!("spans: flushing failed: {err}");
        }
    };
    let mut results = Vec::new();
    for round in 0..rounds {
        let (logs, export) = common::in_turns(round, || run(&logs, &no_flush), || run(&export, &export_flush));
        let result = Round { logs, export };
        eprintln!(
            "spans: round {round}: logs {} ns/job CPU, export {} ns/job CPU",
            result.logs.cpu_ns, result.export.cpu_ns
        );
        results.push(result);
    }
    let median = |value: fn(&Round) -> f64| common::median(results.iter().map(value));
    let flushed = export_telemetry.shutdown().is_ok() && logs_telemetry.shutdown().is_ok();
    common::write_report(
        "spans",
        json!({
            "scenario": "spans",
            "what": "per job: the job span with its fields and the `job succeeded` line, recorded on one thread; with mailbox spans, a claim span and an ack span linked to it",
            "protocol": export_protocol,
            "mailbox_spans": mailbox_spans,
            "jobs_per_run": jobs,
            "rounds": rounds,
            "logs_cpu_ns_per_job": median(|r| r.logs.cpu_ns),
            "export_cpu_ns_per_job": median(|r| r.export.cpu_ns),
            "export_added_cpu_ns_per_job": median(|r| r.export.cpu_ns - r.logs.cpu_ns),
            "export_added_percent": median(|r| 100.0 * (r.export.cpu_ns / r.logs.cpu_ns - 1.0)),
            "logs_wall_ns_per_job": median(|r| r.logs.wall_ns),
            "export_wall_ns_per_job": median(|r| r.export.wall_ns),
            "export_requests": collector.requests(),
            "export_bytes": collector.bytes(),
            "flushed": flushed,
            "machine": common::machine(),
        }),
    );
}

/// One run's cost per job.
struct Cost {
    /// The host's CPU time: the recording thread's and the exporter's.
    cpu_ns: f64,
    /// The recording thread's wall-clock time.
    wall_ns: f64,
}

/// A run with logs only and one with export too.
struct Round {
    logs: Cost,
    export: Cost,
}

fn per_job_ns(time: Duration, jobs: usize) -> f64 {
    common::round(time.as_secs_f64() * 1e9 / jobs as f64)
}

/// The spans and the line of `jobs` trivial jobs, as the worker
/// (`worker/process.rs`, `worker/acker.rs`) and the runtime
/// (`runtime/agent.rs`) record them.
fn record_jobs(jobs: usize) {
    // Looked up once, as a worker does.
    let mailbox = BatchSpans::current("bench-8-1");
    for n in 0..jobs {
        let claim = mailbox
            .as_ref()
            .map(|spans| spans.start().end(BatchOperation::Claim, 1, 0, []));
        let request_id = format!("job-8-{n}");
        let job_id = format!("bench-{n}");
        let job = tracing::info_span!(
            target: "wink_host::worker::process",
            "job",
            otel.name = %format_args!("invoke_agent {}", "trivial"),
            otel.kind = "consumer",
            messaging.operation.type = "process",
            messaging.destination.name = %"bench-8-1",
            messaging.message.id = %format_args!("{n}-0"),
            request_id = %request_id,
            job_id = %job_id,
            attempt = 1_i64,
            worker_id = %"bench",
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = %"trivial",
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let link = mailbox.as_ref().and_then(|spans| spans.join(&job, claim));
        job.in_scope(|| {
            tracing::info!(
                target: "wink_host::runtime::agent",
                elapsed_us = 12_u64,
                fuel = 4_242_u64,
                output_bytes = 9_usize,
                "job succeeded"
            );
        });
        if let Some(spans) = &mailbox {
            drop(job);
            spans.start().end(BatchOperation::Ack, 1, 0, link);
        }
    }
}
