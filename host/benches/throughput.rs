//! `cargo xtask bench throughput`: trivial agent jobs end to end through the
//! worker: enqueue, claim, run in the sandbox, reply, ack.
//!
//! Per case, a producer task enqueues every job (envelopes built before the
//! clock starts) while one worker at concurrency N drains the queue; the
//! clock stops when the last reply is acked. Every reply is then checked.
//! In the same run, the same jobs through `Runtime::run_agent` alone (N tasks
//! in a loop, no mailbox) give the sandbox's own ceiling, so the worker's
//! overhead per job is the difference.
//!
//! With `WINK_BENCH_OTEL=1` (`cargo xtask bench throughput --otel`) each case
//! also runs nine rounds of JSON logging alone (`wink-host` without OTLP)
//! then JSON logging plus OTLP trace export (to an endpoint on loopback,
//! served from a thread of its own, that reads and drops each request;
//! HTTP/protobuf unless `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`). The report
//! gives the median round's throughput drop from the export, and the drop
//! logging costs. Since throughput on a shared 2-core machine swings by
//! more than the export costs, each run also records the host's CPU time
//! per job (getrusage, less the endpoint thread's CPU clock), and the
//! report gives the median round's CPU cost too, the quartiles of the
//! rounds' drops and CPU costs (how far the rounds spread),
//! and both drops between each side's best run, the one the machine
//! disturbed least. Of the export side's CPU per job it also gives the
//! export thread's share (`otel_export_thread_cpu_us_per_job`, part of
//! the host's time) and the endpoint's (`otel_collector_cpu_us_per_job`,
//! not part of it, though it takes the same cores). Spans still queued
//! when an export run ends are sent before the next run. Every run of a
//! case uses the same sandbox runtime, as a worker process keeps one for
//! its life.
//!
//! Each case runs on the in-memory mailbox and on a `redis-server` (on
//! PATH) started on loopback for the run.
//!
//! `WINK_BENCH_JOBS` (default 50,000), `WINK_BENCH_CONCURRENCY` (default
//! `1,8,64`), `WINK_BENCH_MAILBOX` (default `memory,redis`) and
//! `WINK_BENCH_THREADS` (tokio worker threads; default, as `wink-host
//! worker` picks them, one per core but no more than the concurrency) narrow
//! a run, e.g. for profiling; `WINK_BENCH_ROUNDS` (default 9) sets the
//! rounds per case under `--otel`: more of them steady the median on a
//! noisy machine. `WINK_BENCH_OTEL_CONTROL=1` turns the export off on the
//! export side too: the drops such a run reports are the bench's noise.
//! The export side reads the `OTEL_*` variables as `wink-host` does (say
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`), all but the endpoint.
//! Each run also reports the share of the cores the hypervisor took during
//! it (`stolen_percent`, from `/proc/stat`), and each case the drop over
//! the time it left (`otel_unstolen_drop_percent`), beside the drop.

#[path = "common/collector.rs"]
mod collector;
mod common;
#[allow(dead_code)]
#[path = "../tests/common/redis.rs"]
mod redis_server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use collector::CountingCollector;
use serde_json::json;
use wink_host::mailbox::{Envelope, Mailbox, MemoryMailbox};
use wink_host::runtime::{Runtime, RuntimeConfig};
use wink_host::telemetry::TraceConfig;
use wink_host::worker::{JobResources, ReplyRoutes, Worker, WorkerConfig};

const WARMUP_JOBS: usize = 2_000;
/// Jobs per `send_batch` of the producer, as a busy producer would send.
const SEND_BATCH: usize = 256;

fn concurrency_cases() -> Vec<usize> {
    std::env::var("WINK_BENCH_CONCURRENCY")
        .ok()
        .map(|cases| cases.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 64])
}

/// Jobs per case (`WINK_BENCH_JOBS` overrides).
fn jobs_per_case() -> usize {
    common::env_usize("WINK_BENCH_JOBS", 50_000)
}

fn main() {
    wink_host::allocator::tune();
    let bare = Telemetry::bare();
    let jobs = jobs_per_case();
    let telemetry = std::env::var("WINK_BENCH_OTEL")
        .is_ok_and(|v| v == "1")
        .then(|| Telemetries::start(&bare));
    let mailboxes = mailbox_cases();
    let redis = mailboxes.contains(&"redis").then(redis_server::RedisServer::start);
    let mut results = Vec::new();
    for kind in &mailboxes {
        for concurrency in concurrency_cases() {
            let case = Case {
                kind,
                redis_url: redis.as_ref().map(redis_server::RedisServer::url),
                concurrency,
                threads: async_threads(concurrency),
                jobs,
                runtime: sandbox_runtime(concurrency),
            };
            let mut result = match &telemetry {
                None => bare.block_on(case.threads, case.measure(0)),
                Some(telemetry) => telemetry.compare(&bare, &case),
            };
            result["async_threads"] = json!(case.threads);
            if *kind == "memory" {
                let bare = bare.block_on(case.threads, bare_runtime(&case.runtime, concurrency, jobs));
                result["sandbox_only_jobs_per_s"] = json!(bare.round());
                result["worker_overhead_us_per_job"] =
                    json!(common::round(result["us_per_job"].as_f64().unwrap_or(0.0) - 1e6 / bare));
            }
            eprintln!("throughput: {result}");
            results.push(result);
        }
    }
    let otel = telemetry.map(Telemetries::finish);
    common::write_report(
        "throughput",
        json!({
            "scenario": "throughput",
            "what": "trivial agent jobs end to end through one worker: enqueue, claim, run in the sandbox, reply, ack",
            "agent": "trivial (echoes its input, no model or tool calls)",
            "redis": redis.map(|_| "redis-server on loopback, no persistence, same machine"),
            "results": results,
            "target": {"memory_jobs_per_s": 40_000, "redis_jobs_per_s": 20_000, "otel_drop_percent": 3},
            "otel_export": otel,
            "machine": common::machine(),
        }),
    );
}

/// Mailboxes to measure (`WINK_BENCH_MAILBOX`, default `memory,redis`).
fn mailbox_cases() -> Vec<&'static str> {
    let wanted = std::env::var("WINK_BENCH_MAILBOX").unwrap_or_else(|_| "memory,redis".into());
    ["memory", "redis"]
        .into_iter()
        .filter(|kind| wanted.split(',').any(|w| w.trim() == *kind))
        .collect()
}

/// One measurement: a mailbox kind at one concurrency.
struct Case<'a> {
    kind: &'a str,
    redis_url: Option<String>,
    concurrency: usize,
    /// Async threads its runs get.
    threads: usize,
    jobs: usize,
    /// Shared by every run of the case, as a worker process keeps one
    /// engine (and instance pool) for its life.
    runtime: Runtime,
}

impl Case<'_> {
    /// Run the case on a fresh queue (`run` tells repeated runs apart, so a
    /// Redis queue never holds an earlier run's replies).
    async fn measure(&self, run: usize) -> serde_json::Value {
        let queue = format!("bench-{}-{run}", self.concurrency);
        let mailbox: Arc<dyn Mailbox> = match (self.kind, &self.redis_url) {
            ("redis", Some(url)) => wink_host::mailbox::open(url, &queue).await.expect("redis mailbox"),
            _ => Arc::new(MemoryMailbox::new(&queue)),
        };
        measure(self.kind, mailbox, self.runtime.clone(), self.concurrency, self.jobs).await
    }
}

/// The sandbox runtime for a case at `concurrency`.
fn sandbox_runtime(concurrency: usize) -> Runtime {
    Runtime::new(&RuntimeConfig {
        max_concurrent_jobs: concurrency as u32,
        max_concurrent_tool_calls: 1,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// The async threads a worker at `concurrency` runs on (`WINK_BENCH_THREADS`
/// overrides): as `wink-host worker` picks them.
fn async_threads(concurrency: usize) -> usize {
    std::env::var("WINK_BENCH_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            WorkerConfig {
                concurrency,
                ..WorkerConfig::default()
            }
            .async_threads(one_per_core())
        })
}

fn one_per_core() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Tokio runtimes whose threads, and the thread that drives them, trace
/// into one subscriber (none for the bare runs), so variants with
/// different telemetry run side by side in one process.
struct Telemetry {
    name: &'static str,
    dispatch: tracing::Dispatch,
    /// One runtime per thread count, kept for the process's life, as a
    /// worker process keeps its one.
    runtimes: Mutex<HashMap<usize, Arc<tokio::runtime::Runtime>>>,
}

impl Telemetry {
    /// No subscriber at all.
    fn bare() -> Self {
        Self::on("bare", tracing::Dispatch::none())
    }

    /// Its threads are named `name` (for profiles).
    fn on(name: &'static str, dispatch: tracing::Dispatch) -> Self {
        Self {
            name,
            dispatch,
            runtimes: Mutex::default(),
        }
    }

    /// Its runtime with `threads` worker threads.
    fn runtime(&self, threads: usize) -> Arc<tokio::runtime::Runtime> {
        let mut runtimes = self.runtimes.lock().expect("runtimes");
        let runtime = runtimes.entry(threads).or_insert_with(|| {
            let thread_dispatch = self.dispatch.clone();
            let name = self.name;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .thread_name(name)
                // The guard would reset the thread's default when dropped;
                // these threads live as long as the runtime.
                .on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&thread_dispatch)))
                .on_thread_park(move || mark_worker_thread(name))
                .build()
                .expect("tokio");
            Arc::new(runtime)
        });
        runtime.clone()
    }

    fn block_on<F: std::future::Future>(&self, threads: usize, future: F) -> F::Output {
        let runtime = self.runtime(threads);
        tracing::dispatcher::with_default(&self.dispatch, || runtime.block_on(future))
    }
}

/// Leaves a call to a function named for the thread's side in the profile
/// of each of its runtime's worker threads (only they park; its blocking
/// threads, which compile the guest once or twice, are left out):
/// callgrind names no threads, and `cargo xtask bench throughput --otel
/// --instructions` tells each side's job threads apart by these.
fn mark_worker_thread(side: &str) {
    // Bodies that differ, so that the two are not folded into one.
    #[inline(never)]
    fn logs_side_thread() {
        std::hint::black_box(1_u8);
    }
    #[inline(never)]
    fn export_side_thread() {
        std::hint::black_box(2_u8);
    }
    match side {
        "logs" => logs_side_thread(),
        "export" => export_side_thread(),
        _ => {}
    }
}

/// Rounds of (logs only, logs and export) per case under `--otel`
/// (`WINK_BENCH_ROUNDS` overrides). Each round's two runs are compared with
/// each other, since runs close in time share the machine's mood, and the
/// median round is reported, so that a round slowed by something else on
/// the machine does not count as the exporter's cost.
fn otel_rounds() -> usize {
    common::env_usize("WINK_BENCH_ROUNDS", 9).max(1)
}

/// `WINK_BENCH_OTEL_CONTROL=1`: the export side logs only too, so both
/// sides run the same code and the drops reported are the bench's own
/// noise (an A/A run).
fn otel_control() -> bool {
    std::env::var("WINK_BENCH_OTEL_CONTROL").is_ok_and(|v| v == "1")
}

/// `WINK_BENCH_OTEL=1`: `wink-host`'s telemetry as it runs in production
/// (JSON log lines at `WINK_LOG`'s level, to a sink here), without and with
/// OTLP trace export to an endpoint that only counts requests, as a
/// collector elsewhere would take them. The drop is the export's cost: the
/// logs are the same on both sides.
///
/// Both subscribers are registered with tracing-core, which then caches
/// each callsite's interest from the registered subscribers. With a single
/// one, it caches it from whatever subscriber is the default on the thread
/// that first hits the callsite: with the bare run first, every callsite
/// was cached as never enabled and the traced runs recorded nothing.
struct Telemetries {
    logs: Telemetry,
    export: Telemetry,
    providers: [wink_host::telemetry::Telemetry; 2],
    /// The export side's configuration (none in a control run).
    exported: Option<TraceConfig>,
}

impl Telemetries {
    fn start(bare: &Telemetry) -> Self {
        use wink_host::telemetry::{self, LogFormat, Redactor, TelemetryOptions};
        let collector = COLLECTOR.get_or_init(CountingCollector::start);
        let build = |traces| {
            let options = TelemetryOptions {
                format: LogFormat::Json,
                redactor: Redactor::new([], []).expect("redactor"),
                traces,
            };
            let _context = bare.runtime(one_per_core()).enter();
            telemetry::build(options, std::io::sink).expect("telemetry")
        };
        let (logs, logs_provider) = build(None);
        let exported = (!otel_control()).then(|| collector.trace_config());
        let (export, export_provider) = build(exported.clone());
        Self {
            logs: Telemetry::on("logs", logs),
            export: Telemetry::on("export", export),
            providers: [logs_provider, export_provider],
            exported,
        }
    }

    /// The case measured bare once, then in rounds of logs only and logs
    /// with export; the median round's throughput, CPU time and drops, and
    /// the drops between each side's best run.
    fn compare(&self, bare: &Telemetry, case: &Case) -> serde_json::Value {
        let mut result = bare.block_on(case.threads, case.measure(0));
        let rounds: Vec<Round> = (1..=otel_rounds()).map(|round| self.round(case, round)).collect();
        for round in &rounds {
            eprintln!(
                "throughput: round: logs {} jobs/s {} us/job, export {} jobs/s {} us/job; stolen {}% and {}%",
                jobs_per_s(&round.logs),
                cpu_us_per_job(&round.logs),
                jobs_per_s(&round.export),
                cpu_us_per_job(&round.export),
                number(&round.logs, "stolen_percent"),
                number(&round.export, "stolen_percent"),
            );
        }
        let median_of = |value: fn(&Round) -> f64| common::median(rounds.iter().map(value));
        let logs_jobs_per_s = median_of(|r| jobs_per_s(&r.logs));
        result["rounds"] = json!(rounds.len());
        result["logs_jobs_per_s"] = json!(logs_jobs_per_s);
        result["otel_jobs_per_s"] = json!(median_of(|r| jobs_per_s(&r.export)));
        result["logs_drop_percent"] = json!(common::round(drop_percent(jobs_per_s(&result), logs_jobs_per_s)));
        // Each round's drop in `value` from its logs run to its export run.
        let drops_of = |value: fn(&serde_json::Value) -> f64| {
            rounds
                .iter()
                .map(move |r| drop_percent(value(&r.logs), value(&r.export)))
        };
        result["otel_drop_percent"] = json!(common::median(drops_of(jobs_per_s)));
        // How far apart the rounds lie: on a noisy machine the middle half
        // of the rounds' drops spans several points around the median.
        result["otel_drop_percent_quartiles"] = json!(common::quartiles(drops_of(jobs_per_s)));
        // The same on the time the hypervisor left each run: on a shared VM
        // it takes several percent of the cores at random, slowing whichever
        // side it falls on. Reported beside the drop, never instead of it.
        result["otel_unstolen_drop_percent"] = json!(common::median(drops_of(unstolen_jobs_per_s)));
        result["otel_unstolen_drop_percent_quartiles"] = json!(common::quartiles(drops_of(unstolen_jobs_per_s)));
        result["stolen_percent_max"] = json!(
            rounds
                .iter()
                .flat_map(|r| [&r.logs, &r.export])
                .map(|run| number(run, "stolen_percent"))
                .fold(0.0, f64::max)
        );
        result["logs_cpu_us_per_job"] = json!(median_of(|r| cpu_us_per_job(&r.logs)));
        result["otel_cpu_us_per_job"] = json!(median_of(|r| cpu_us_per_job(&r.export)));
        let cpu_added = || drops_of(cpu_us_per_job).map(|drop| -drop);
        // Of the export side's CPU per job: the export thread's share, and
        // beside it the collector's, which shares the machine's cores
        // though in production it runs elsewhere.
        result["otel_export_thread_cpu_us_per_job"] =
            json!(median_of(|r| number(&r.export, "export_thread_cpu_us_per_job")));
        result["otel_collector_cpu_us_per_job"] = json!(median_of(|r| number(&r.export, "collector_cpu_us_per_job")));
        result["otel_cpu_percent"] = json!(common::median(cpu_added()));
        result["otel_cpu_percent_quartiles"] = json!(common::quartiles(cpu_added()));
        // The best run of each side, too: on a machine that slows whole
        // runs down at random, the fastest run of each is the one least
        // disturbed.
        let best = |value: fn(&Round) -> f64, better: fn(f64, f64) -> f64| {
            rounds.iter().map(value).reduce(better).unwrap_or(f64::NAN)
        };
        result["otel_drop_percent_best"] = json!(common::round(drop_percent(
            best(|r| jobs_per_s(&r.logs), f64::max),
            best(|r| jobs_per_s(&r.export), f64::max)
        )));
        result["otel_cpu_percent_best"] = json!(common::round(-drop_percent(
            best(|r| cpu_us_per_job(&r.logs), f64::min),
            best(|r| cpu_us_per_job(&r.export), f64::min)
        )));
        result
    }

    /// One round: logs only and logs with export, in turns first.
    fn round(&self, case: &Case, round: usize) -> Round {
        let (logs, export) = common::in_turns(
            round - 1,
            || self.logs.block_on(case.threads, case.measure(2 * round - 1)),
            || self.export_flushed(case.threads, case.measure(2 * round)),
        );
        Round { logs, export }
    }

    /// Runs `measure` with export, then sends the spans still queued, so
    /// that the next run, with logs only, does not pay for them.
    fn export_flushed(
        &self,
        threads: usize,
        measure: impl std::future::Future<Output = serde_json::Value>,
    ) -> serde_json::Value {
        let result = self.export.block_on(threads, measure);
        if let Err(err) = self.providers[1].flush() {
            eprintln!("throughput: flushing the spans of a run failed: {err}");
        }
        result
    }

    fn finish(self) -> serde_json::Value {
        let flushed = self.providers.into_iter().all(|provider| provider.shutdown().is_ok());
        let collector = COLLECTOR.get();
        json!({
            "protocol": self.exported.as_ref().map(|config| config.protocol.as_str()),
            "control": otel_control(),
            "receiver": "in-process on a thread of its own, reads and drops each request; its CPU time is not counted as the host's",
            "export_requests": collector.map(CountingCollector::requests),
            "export_bytes": collector.map(CountingCollector::bytes),
            "max_export_batch_size": self.exported.as_ref().map(|config| config.batch.max_export_batch_size),
            "max_queue_size": self.exported.as_ref().map(|config| config.batch.max_queue_size),
            "flushed": flushed,
        })
    }
}

/// One round under `--otel`: a run with logs only, then one with export too.
struct Round {
    logs: serde_json::Value,
    export: serde_json::Value,
}

/// How much lower `to` is than `from`, in percent.
fn drop_percent(from: f64, to: f64) -> f64 {
    100.0 * (1.0 - to / from)
}

fn cpu_us_per_job(result: &serde_json::Value) -> f64 {
    number(result, "cpu_us_per_job")
}

fn unstolen_jobs_per_s(result: &serde_json::Value) -> f64 {
    number(result, "unstolen_jobs_per_s")
}

/// A number a run reported, NaN if it did not.
fn number(result: &serde_json::Value, field: &str) -> f64 {
    result[field].as_f64().unwrap_or(f64::NAN)
}

fn jobs_per_s(result: &serde_json::Value) -> f64 {
    result["jobs_per_s"].as_f64().unwrap_or(0.0)
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

async fn measure(
    name: &str,
    mailbox: Arc<dyn Mailbox>,
    runtime: Runtime,
    concurrency: usize,
    jobs: usize,
) -> serde_json::Value {
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
    let cpu_before = host_cpu_time();
    let collector_before = collector_cpu_time();
    let export_thread_before = common::threads_cpu_time(EXPORT_THREAD);
    let steal_before = common::machine_steal_per_cpu();
    let summary_before = worker.summary();
    let elapsed = drain(&worker, mailbox.as_ref(), measured, WARMUP_JOBS as u64).await;
    let stolen = common::machine_steal_per_cpu().saturating_sub(steal_before);
    let summary_after = worker.summary();
    let cpu = host_cpu_time().saturating_sub(cpu_before);
    let collector_cpu = collector_cpu_time().saturating_sub(collector_before);
    let export_thread_cpu = common::threads_cpu_time(EXPORT_THREAD).saturating_sub(export_thread_before);

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
    let per_job = |time: Duration| common::round(time.as_secs_f64() * 1e6 / jobs as f64);
    // The run's time on the cores the hypervisor left it (taken as at
    // least half the run: steal is counted in 10 ms ticks, and a short run
    // may read a tick more than it lost).
    let unstolen_seconds = (seconds - stolen.as_secs_f64()).max(seconds / 2.0);
    json!({
        "mailbox": name,
        "concurrency": concurrency,
        "jobs": jobs,
        "seconds": common::round(seconds),
        "jobs_per_s": (jobs as f64 / seconds).round(),
        "stolen_percent": common::round(100.0 * stolen.as_secs_f64() / seconds),
        "unstolen_jobs_per_s": (jobs as f64 / unstolen_seconds).round(),
        "us_per_job": common::round(seconds * 1e6 / jobs as f64),
        "cpu_us_per_job": per_job(cpu),
        "collector_cpu_us_per_job": per_job(collector_cpu),
        "export_thread_cpu_us_per_job": per_job(export_thread_cpu),
        "messages_per_claim": common::round(
            (summary_after.claimed - summary_before.claimed) as f64
                / (summary_after.batches_claimed - summary_before.batches_claimed).max(1) as f64
        ),
    })
}

/// The name of the thread that posts the spans (counted in the host's CPU
/// time, and reported apart too).
const EXPORT_THREAD: &str = "otlp-export";

/// The endpoint `--otel` exports to, once started.
static COLLECTOR: OnceLock<CountingCollector> = OnceLock::new();

/// CPU time used so far by the host: every thread of this process but the
/// collector's.
fn host_cpu_time() -> Duration {
    common::process_cpu_time().saturating_sub(collector_cpu_time())
}

/// CPU time used so far by the collector's thread (none before it starts).
fn collector_cpu_time() -> Duration {
    COLLECTOR.get().map_or(Duration::ZERO, CountingCollector::cpu_time)
}

/// Jobs per second through `Runtime::run_agent` alone: `concurrency` tasks
/// each running its share of `jobs` back to back.
async fn bare_runtime(runtime: &Runtime, concurrency: usize, jobs: usize) -> f64 {
    let agent = runtime
        .load_agent(&common::guest("trivial"))
        .await
        .expect("trivial agent");
    let env = wink_host::runtime::JobEnv::new(Arc::new(wink_host::model::ScriptedProvider::echo()));
    let run = |count: usize, prefix: usize| {
        let (runtime, agent, env) = (runtime.clone(), agent.clone(), env.clone());
        tokio::spawn(async move {
            for i in 0..count {
                let request = wink_host::job::JobRequest::new(format!("bare-{prefix}-{i}"), format!("{{\"n\":{i}}}"));
                let report = runtime.run_agent(&agent, request, env.clone()).await;
                assert!(report.outcome.is_ok(), "{:?}", report.outcome);
            }
        })
    };
    for task in (0..concurrency).map(|t| run(WARMUP_JOBS / concurrency + 1, t)) {
        task.await.expect("warm-up task");
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency).map(|t| run(jobs / concurrency, t)).collect();
    for task in tasks {
        task.await.expect("bare task");
    }
    (jobs / concurrency * concurrency) as f64 / started.elapsed().as_secs_f64()
}

/// Enqueue `jobs` from a producer task while the worker drains them; the
/// time until the worker has acked all of them (`done_before` were acked earlier).
async fn drain(worker: &Worker, mailbox: &dyn Mailbox, jobs: Vec<(String, Bytes)>, done_before: u64) -> Duration {
    let total = done_before + jobs.len() as u64;
    let started = Instant::now();
    let producer = async {
        for batch in jobs.chunks(SEND_BATCH) {
            for sent in mailbox.send_batch(batch).await.expect("send") {
                sent.expect("send");
            }
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
