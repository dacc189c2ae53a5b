//! The worker against the in-memory mailbox, with real components built from
//! this repo: answers, poison, retries, dead letters, deadlines, budgets
//! across redeliveries, leases, shutdown and health.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use common::worker_jobs::*;
use common::worker_process::WorkerProcess;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wink_host::mailbox::{Envelope, Mailbox, MemoryMailbox, Reply};
use wink_host::model::{
    CallContext, ConverseRequest, ConverseResponse, MemoryUsageLedger, ModelError, ModelPolicy, ModelProvider, Script,
    ScriptedProvider, UsageLedger,
};
use wink_host::policy::{HumanDuration, Policy};
use wink_host::runtime::Runtime;
use wink_host::worker::{
    HealthServer, JobResources, ReplyDocument, ReplyQueues, ReplyRoutes, ReplyStatus, WorkerConfig,
};

const QUEUE: &str = "jobs";

/// Quick to poll, retry and shut down, so the tests run in seconds.
fn config() -> WorkerConfig {
    let limits = test_limits();
    WorkerConfig {
        worker_id: Some("test-worker".into()),
        concurrency: 4,
        lease: ms(10_000),
        heartbeat: ms(1_000),
        max_attempts: 3,
        backoff_base: ms(50),
        backoff_max: ms(200),
        grace_period: ms(10_000),
        poll_wait: ms(50),
        reap_interval: ms(100),
        depth_interval: ms(200),
        ready_threshold: ms(2_000),
        job_timeout: HumanDuration(limits.deadline),
        fuel: limits.fuel,
        memory: wink_host::policy::ByteSize(limits.memory_bytes),
        ..WorkerConfig::default()
    }
}

fn start_with(mailbox: Arc<MemoryMailbox>, config: WorkerConfig, resources: JobResources) -> Running {
    start_on(runtime(), mailbox, config, resources, ReplyRoutes::registered_only())
}

fn start_on(
    runtime: Runtime,
    mailbox: Arc<MemoryMailbox>,
    config: WorkerConfig,
    resources: JobResources,
    routes: ReplyRoutes,
) -> Running {
    Running::start(runtime, mailbox, config, resources, routes)
}

fn start(config: WorkerConfig) -> Running {
    start_with(Arc::new(MemoryMailbox::new(QUEUE)), config, JobResources::default())
}

async fn send_raw(mailbox: &dyn Mailbox, request_id: &str, payload: &str) {
    mailbox
        .send(request_id, Bytes::from(payload.to_owned()))
        .await
        .expect("send");
}

fn scripted_model(json: serde_json::Value) -> Arc<dyn ModelProvider> {
    Arc::new(ScriptedProvider::new(Script::parse(&json.to_string()).expect("script")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_end_to_end_and_each_is_answered_once() {
    let replies = Arc::new(MemoryMailbox::new("replies"));
    let mailbox = Arc::new(MemoryMailbox::new(QUEUE));
    let routes = ReplyRoutes::registered_only().register(replies.clone());
    let running = start_on(runtime(), mailbox.clone(), config(), JobResources::default(), routes);
    for i in 0..12 {
        let mut job = envelope(&format!("hello-{i}"), "hello", json!({"prompt": format!("ping {i}")}));
        job.tags.insert("batch".into(), "one".into());
        send(mailbox.as_ref(), &job).await;
        send(
            mailbox.as_ref(),
            &envelope(&format!("trivial-{i}"), "trivial", json!({"n": i})),
        )
        .await;
    }
    let mut routed = envelope("routed", "trivial", json!({"n": "r"}));
    routed.reply_to = Some("replies".into());
    routed.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    send(mailbox.as_ref(), &routed).await;

    for i in 0..12 {
        let hello = reply(mailbox.as_ref(), &format!("hello-{i}")).await;
        assert_eq!(hello.status, ReplyStatus::Succeeded, "{hello:?}");
        assert_eq!(
            hello.output.as_ref().map(|o| o["text"].clone()),
            Some(json!(format!("echo: ping {i}")))
        );
        assert_eq!((hello.attempts, hello.usage.model_calls), (1, 1));
        assert_eq!(hello.spent.turns, 1, "{hello:?}");
        assert_eq!(hello.worker_id, "test-worker");
        assert!(hello.job_id.starts_with("test-worker-"), "{}", hello.job_id);
        assert_eq!(hello.tags.get("batch").map(String::as_str), Some("one"));
        assert!(hello.timings.finished_at_ms >= hello.timings.started_at_ms);
        assert!(hello.timings.started_at_ms >= hello.timings.enqueued_at_ms);
        let trivial = reply(mailbox.as_ref(), &format!("trivial-{i}")).await;
        assert_eq!(trivial.output, Some(json!({"ok": true, "echo": {"n": i}})));
        assert!(trivial.usage.fuel > 0);
    }
    // Acks are batched: the routed job may be answered after the others.
    reply(mailbox.as_ref(), "routed").await;
    let stored = mailbox.reply("routed").await.expect("reply").expect("stored reply");
    let sent = replies
        .claim(10, Duration::from_secs(5), Duration::ZERO)
        .await
        .expect("claim");
    assert_eq!(sent.len(), 1, "exactly one reply is sent to reply_to");
    assert_eq!(
        (sent[0].lease.message_id.as_str(), &sent[0].payload),
        ("routed", &stored)
    );

    let summary = running.stop().await;
    assert_eq!((summary.claimed, summary.succeeded), (25, 25), "{summary:?}");
    assert_eq!(
        summary.retried + summary.dead_lettered + summary.failed,
        0,
        "{summary:?}"
    );
    let depth = mailbox.depth().await.expect("depth");
    assert_eq!(depth.backlog() + depth.dead, 0, "{depth:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_straight_to_the_dead_letter_queue_while_other_jobs_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corrupt = dir.path().join("corrupt.wasm");
    std::fs::write(&corrupt, b"\0asm\x0d\0\x01\0 this is not a component").expect("write");
    let missing = dir.path().join("missing.wasm");
    // Reading a device grows without end, and opening a FIFO waits for a
    // writer: neither may take the worker down or hold up its other jobs.
    let fifo = dir.path().join("fifo.wasm");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success(), "mkfifo: {made}");
    let running = start(config());
    let mailbox = running.mailbox.clone();
    send(mailbox.as_ref(), &Envelope::new("device", "/dev/zero")).await;
    send(mailbox.as_ref(), &Envelope::new("fifo", fifo.to_str().expect("path"))).await;
    send(
        mailbox.as_ref(),
        &Envelope::new("directory", dir.path().to_str().expect("path")),
    )
    .await;
    send_raw(mailbox.as_ref(), "not-json", "{this is not json").await;
    send_raw(
        mailbox.as_ref(),
        "wrong-version",
        r#"{"version":7,"request_id":"wrong-version","agent":"a.wasm"}"#,
    )
    .await;
    send_raw(
        mailbox.as_ref(),
        "typo",
        r#"{"version":1,"request_id":"typo","agent":"a.wasm","inptu":{}}"#,
    )
    .await;
    send(
        mailbox.as_ref(),
        &Envelope::new("missing", missing.to_str().expect("path")),
    )
    .await;
    send(
        mailbox.as_ref(),
        &Envelope::new("corrupt", corrupt.to_str().expect("path")),
    )
    .await;
    send(mailbox.as_ref(), &envelope("a-tool", "read_file", json!({}))).await;
    send(mailbox.as_ref(), &Envelope::new("bucket-only", "s3://agents")).await;
    for i in 0..6 {
        send(
            mailbox.as_ref(),
            &envelope(&format!("good-{i}"), "trivial", json!({"i": i})),
        )
        .await;
    }

    let dead = dead_letters(mailbox.as_ref(), 10).await;
    let expected = [
        ("device", "component_unreadable", "/dev/zero: not a regular file"),
        ("fifo", "component_unreadable", "fifo.wasm: not a regular file"),
        ("directory", "component_unreadable", "not a regular file"),
        ("not-json", "malformed_envelope", "malformed job envelope"),
        ("wrong-version", "unsupported_envelope_version", "version 7"),
        ("typo", "malformed_envelope", "unknown field `inptu`"),
        ("missing", "component_unreadable", "missing.wasm"),
        ("corrupt", "component_invalid", "corrupt"),
        ("a-tool", "component_wrong_world", "agent"),
        ("bucket-only", "invalid_envelope", "s3://BUCKET/KEY"),
    ];
    for (id, kind, text) in expected {
        let letter = dead_letter(&dead, id);
        assert_eq!(letter.reason.kind, kind, "{id}: {letter:?}");
        assert!(letter.reason.message.contains(text), "{id}: {}", letter.reason.message);
        assert_eq!(letter.attempts, 1, "{id}: poison is never retried");
        assert!(letter.dead_at_ms >= letter.enqueued_at_ms);
        assert_eq!(mailbox.reply(id).await.expect("reply"), None, "{id} has no reply");
    }
    for i in 0..6 {
        assert_eq!(
            reply(mailbox.as_ref(), &format!("good-{i}")).await.status,
            ReplyStatus::Succeeded
        );
    }
    let summary = running.stop().await;
    assert_eq!(
        (summary.dead_lettered, summary.succeeded, summary.retried),
        (10, 6, 0),
        "{summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_outside_the_reply_queues_is_dead_lettered_before_the_job_runs() {
    // Both queues are reachable: only the worker's list keeps a job from
    // putting its reply on the other workers' job queue.
    let replies = Arc::new(MemoryMailbox::new("replies-7"));
    let jobs_elsewhere = Arc::new(MemoryMailbox::new("jobs-b"));
    let routes = ReplyRoutes::registered_only()
        .register(replies.clone())
        .register(jobs_elsewhere.clone());
    let config = WorkerConfig {
        reply_queues: ReplyQueues::parse("replies-*").expect("reply queues"),
        ..config()
    };
    let mailbox = Arc::new(MemoryMailbox::new(QUEUE));
    let running = start_on(runtime(), mailbox.clone(), config, JobResources::default(), routes);
    let mut hijack = envelope("hijack", "trivial", json!({}));
    hijack.reply_to = Some("jobs-b".into());
    send(mailbox.as_ref(), &hijack).await;
    let mut routed = envelope("routed", "trivial", json!({}));
    routed.reply_to = Some("replies-7".into());
    send(mailbox.as_ref(), &routed).await;

    let dead = dead_letters(mailbox.as_ref(), 1).await;
    let letter = dead_letter(&dead, "hijack");
    assert_eq!(letter.reason.kind, "invalid_envelope", "{letter:?}");
    assert!(
        letter.reason.message.contains("`jobs-b`") && letter.reason.message.contains("`replies-*`"),
        "{}",
        letter.reason.message
    );
    assert_eq!(reply(mailbox.as_ref(), "routed").await.status, ReplyStatus::Succeeded);
    let summary = running.stop().await;
    assert_eq!((summary.dead_lettered, summary.succeeded), (1, 1), "{summary:?}");
    assert_eq!(mailbox.reply("hijack").await.expect("reply"), None, "the job never ran");
    assert_eq!(jobs_elsewhere.depth().await.expect("depth").backlog(), 0);
    assert_eq!(replies.depth().await.expect("depth").backlog(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_the_policy_does_not_grant_or_a_widening_job_is_refused() {
    let policy = Policy::parse("[agents.trivial]\nbudget = { max_turns = 2 }\n", "test").expect("policy");
    let resources = JobResources {
        policy: Some(policy),
        ..JobResources::default()
    };
    let running = start_with(Arc::new(MemoryMailbox::new(QUEUE)), config(), resources);
    let mailbox = running.mailbox.clone();
    send(mailbox.as_ref(), &envelope("stranger", "hello", json!({}))).await;
    let mut greedy = envelope("greedy", "trivial", json!({}));
    greedy.budget.max_turns = Some(5);
    send(mailbox.as_ref(), &greedy).await;
    let mut modest = envelope("modest", "trivial", json!({}));
    modest.budget.max_turns = Some(1);
    send(mailbox.as_ref(), &modest).await;

    let dead = dead_letters(mailbox.as_ref(), 2).await;
    let stranger = dead_letter(&dead, "stranger");
    assert_eq!(stranger.reason.kind, "policy_refused");
    assert!(stranger.reason.message.contains("[agents.hello]"), "{stranger:?}");
    let greedy = dead_letter(&dead, "greedy");
    assert_eq!(greedy.reason.kind, "policy_refused");
    assert!(greedy.reason.message.contains("max_turns 5"), "{greedy:?}");
    assert_eq!(reply(mailbox.as_ref(), "modest").await.status, ReplyStatus::Succeeded);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_failure_is_retried_with_backoff_then_dead_lettered_with_its_error() {
    // The deadline is retryable (a slow model or a busy host); a spinning
    // agent hits it on every attempt.
    let running = start(WorkerConfig {
        job_timeout: ms(300),
        fuel: u64::MAX / 2,
        ..config()
    });
    let mailbox = running.mailbox.clone();
    send(
        mailbox.as_ref(),
        &envelope("slow", "adversary", json!({"mode": "spin"})),
    )
    .await;
    let dead = dead_letters(mailbox.as_ref(), 1).await;
    let letter = dead_letter(&dead, "slow");
    assert_eq!(letter.reason.kind, "limit_exceeded", "{letter:?}");
    assert!(
        letter.reason.message.contains("deadline limit exceeded (300 ms)")
            && letter.reason.message.contains("attempt 3 of 3"),
        "{}",
        letter.reason.message
    );
    assert_eq!(letter.attempts, 3);
    // Three runs of 300 ms and two backoffs of at least 25 and 50 ms.
    assert!(
        letter.dead_at_ms - letter.enqueued_at_ms >= 975,
        "{} ms",
        letter.dead_at_ms - letter.enqueued_at_ms
    );
    assert_eq!(mailbox.reply("slow").await.expect("reply"), None);
    let summary = running.stop().await;
    assert_eq!(
        (summary.claimed, summary.retried, summary.dead_lettered),
        (3, 2, 1),
        "{summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_failures_are_answered_once_without_a_retry() {
    let running = start(WorkerConfig {
        fuel: 50_000_000,
        ..config()
    });
    let mailbox = running.mailbox.clone();
    send(
        mailbox.as_ref(),
        &envelope("trap", "adversary", json!({"mode": "trap"})),
    )
    .await;
    send(
        mailbox.as_ref(),
        &envelope("fuel", "adversary", json!({"mode": "spin"})),
    )
    .await;
    send(
        mailbox.as_ref(),
        &envelope("refused", "adversary", json!({"mode": "nonsense"})),
    )
    .await;

    let trap = reply(mailbox.as_ref(), "trap").await;
    assert_eq!(trap.status, ReplyStatus::Failed);
    let error = trap.error.expect("error");
    assert_eq!(error.kind, "trap");
    assert!(error.message.starts_with("agent trapped"), "{}", error.message);
    let fuel = reply(mailbox.as_ref(), "fuel").await.error.expect("error");
    assert_eq!(
        (fuel.kind.as_str(), fuel.cause.as_deref()),
        ("limit_exceeded", Some("fuel"))
    );
    let refused = reply(mailbox.as_ref(), "refused").await;
    let error = refused.error.expect("error");
    assert_eq!(
        (error.kind.as_str(), error.cause.as_deref()),
        ("agent", Some("invalid_input"))
    );
    assert_eq!(refused.attempts, 1);
    let summary = running.stop().await;
    assert_eq!(
        (summary.failed, summary.retried, summary.claimed),
        (3, 0, 3),
        "{summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_delivered_more_than_max_attempts_is_dead_lettered_at_claim() {
    let mailbox = Arc::new(MemoryMailbox::new(QUEUE));
    send(mailbox.as_ref(), &envelope("crasher", "trivial", json!({}))).await;
    // Three workers each claimed it and died: their leases lapsed.
    for attempt in 1..=3 {
        let batch = mailbox
            .claim(1, Duration::from_millis(20), Duration::from_secs(5))
            .await
            .expect("claim");
        assert_eq!(batch[0].attempt, attempt);
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    let running = start_with(mailbox.clone(), config(), JobResources::default());
    let dead = dead_letters(mailbox.as_ref(), 1).await;
    let letter = dead_letter(&dead, "crasher");
    assert_eq!(letter.reason.kind, "max_attempts");
    assert!(
        letter.reason.message.contains("delivery 4"),
        "{}",
        letter.reason.message
    );
    assert_eq!(letter.attempts, 4);
    assert_eq!(mailbox.reply("crasher").await.expect("reply"), None, "it was not run");
    let summary = running.stop().await;
    assert_eq!((summary.dead_lettered, summary.succeeded), (1, 0), "{summary:?}");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_is_answered_as_deadline_exceeded_not_run_or_retried() {
    let running = start(WorkerConfig {
        fuel: u64::MAX / 2,
        ..config()
    });
    let mailbox = running.mailbox.clone();
    let mut expired = envelope("expired", "trivial", json!({}));
    expired.deadline = Some(now_ms() - 1_000);
    send(mailbox.as_ref(), &expired).await;
    let mut cut = envelope("cut", "adversary", json!({"mode": "spin"}));
    cut.deadline = Some(now_ms() + 400);
    send(mailbox.as_ref(), &cut).await;

    let expired = reply(mailbox.as_ref(), "expired").await;
    let error = expired.error.expect("error");
    assert_eq!(error.kind, "deadline_exceeded");
    assert!(error.message.contains("before it could start"), "{}", error.message);
    assert_eq!(expired.usage.fuel, 0, "it did not run");
    let cut = reply(mailbox.as_ref(), "cut").await;
    let error = cut.error.expect("error");
    assert_eq!(error.kind, "deadline_exceeded", "{error:?}");
    assert!(error.message.contains("while it ran"), "{}", error.message);
    assert!(
        cut.timings.run_us < 2_000_000,
        "the deadline bounded the run: {:?}",
        cut.timings
    );
    let summary = running.stop().await;
    assert_eq!((summary.failed, summary.retried), (2, 0), "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_request_continues_its_budget_instead_of_starting_over() {
    let model = scripted_model(budgeted_script());
    let ledger = Arc::new(MemoryUsageLedger::default());
    let resources = JobResources {
        model_policy: ModelPolicy {
            ledger: ledger.clone(),
            ..ModelPolicy::default()
        },
        ..JobResources::new(model)
    };
    let running = start_with(Arc::new(MemoryMailbox::new(QUEUE)), config(), resources);
    let mailbox = running.mailbox.clone();
    send(mailbox.as_ref(), &budgeted_job()).await;

    let answer = reply(mailbox.as_ref(), "budgeted").await;
    assert_budget_carried_over(&answer);
    assert_eq!(
        (answer.spent.turns, answer.spent.input_tokens),
        // Two answered turns of 10 input tokens, and the call the first
        // attempt's deadline cut short, charged its prompt (one token).
        (2, 21),
        "{:?}",
        answer.spent
    );
    let summary = running.stop().await;
    assert_eq!((summary.retried, summary.succeeded), (1, 1), "{summary:?}");
    assert_eq!(
        ledger.spent("budgeted").await.expect("in-memory ledger").turns,
        0,
        "a finished request is forgotten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_extended_while_a_long_job_runs() {
    let model = Arc::new(ScriptedProvider::new(Script::repeating_text(
        "done",
        Duration::from_millis(1_500),
    )));
    let config = WorkerConfig {
        lease: ms(400),
        heartbeat: ms(100),
        ..config()
    };
    let running = start_with(Arc::new(MemoryMailbox::new(QUEUE)), config, JobResources::new(model));
    let mailbox = running.mailbox.clone();
    send(mailbox.as_ref(), &envelope("long", "hello", json!({}))).await;
    let answer = reply(mailbox.as_ref(), "long").await;
    assert_eq!((answer.status, answer.attempts), (ReplyStatus::Succeeded, 1));
    let summary = running.stop().await;
    assert_eq!(
        summary.claimed, 1,
        "the lease never lapsed, so it was never redelivered"
    );
}

/// Blocks its thread inside the model call: a stuck task that cannot run its
/// heartbeat.
#[derive(Debug)]
struct BlockingModel(Duration);

#[async_trait]
impl ModelProvider for BlockingModel {
    async fn converse(&self, request: &ConverseRequest, context: &CallContext) -> Result<ConverseResponse, ModelError> {
        std::thread::sleep(self.0);
        ScriptedProvider::echo().converse(request, context).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_job_loses_its_lease_and_its_late_reply_is_dropped() {
    let config = WorkerConfig {
        concurrency: 1,
        lease: ms(300),
        heartbeat: ms(100),
        ..config()
    };
    let model = Arc::new(BlockingModel(Duration::from_millis(1_500)));
    let running = start_with(Arc::new(MemoryMailbox::new(QUEUE)), config, JobResources::new(model));
    let mailbox = running.mailbox.clone();
    send(mailbox.as_ref(), &envelope("stuck", "hello", json!({}))).await;
    eventually("the worker to claim the job", Duration::from_secs(10), || async {
        (running.worker.summary().claimed == 1).then_some(())
    })
    .await;
    // Another worker takes the job over once the stuck task's lease lapses.
    let taken = mailbox
        .claim(1, Duration::from_secs(30), Duration::from_secs(10))
        .await
        .expect("claim")
        .pop()
        .expect("the lapsed job is claimable");
    assert_eq!(taken.attempt, 2);
    let reply = Reply {
        request_id: "stuck".into(),
        body: Bytes::from_static(b"{\"by\":\"the new holder\"}"),
    };
    mailbox.ack(&taken.lease, &reply).await.expect("the new holder acks");
    let summary = eventually("the stuck job to end", Duration::from_secs(10), || async {
        let summary = running.worker.summary();
        (summary.lease_lost == 1).then_some(summary)
    })
    .await;
    assert_eq!(summary.succeeded, 0, "{summary:?}");
    assert_eq!(
        mailbox.reply("stuck").await.expect("reply"),
        Some(reply.body),
        "exactly one reply: the new holder's"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_jobs_finish_within_the_grace_period() {
    let model = Arc::new(ScriptedProvider::new(Script::repeating_text(
        "done",
        Duration::from_millis(500),
    )));
    let running = start_with(Arc::new(MemoryMailbox::new(QUEUE)), config(), JobResources::new(model));
    let mailbox = running.mailbox.clone();
    for i in 0..4 {
        send(mailbox.as_ref(), &envelope(&format!("j{i}"), "hello", json!({}))).await;
    }
    eventually("4 jobs in flight", Duration::from_secs(10), || async {
        (mailbox.depth().await.expect("depth").in_flight == 4).then_some(())
    })
    .await;
    let health = running.worker.health();
    let summary = running.stop().await;
    assert!(health.readiness().is_err_and(|r| r.contains("draining")));
    assert_eq!((summary.succeeded, summary.released), (4, 0), "{summary:?}");
    for i in 0..4 {
        assert_eq!(
            reply(mailbox.as_ref(), &format!("j{i}")).await.status,
            ReplyStatus::Succeeded
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_still_running_after_the_grace_period_are_given_back_and_none_is_lost() {
    let slow = Arc::new(ScriptedProvider::new(Script::repeating_text(
        "slow",
        Duration::from_secs(20),
    )));
    let config = WorkerConfig {
        grace_period: ms(200),
        ..config()
    };
    let mailbox = Arc::new(MemoryMailbox::new(QUEUE));
    let running = start_with(mailbox.clone(), config.clone(), JobResources::new(slow));
    for i in 0..6 {
        send(mailbox.as_ref(), &envelope(&format!("j{i}"), "hello", json!({}))).await;
    }
    eventually("4 jobs in flight", Duration::from_secs(10), || async {
        (mailbox.depth().await.expect("depth").in_flight == 4).then_some(())
    })
    .await;
    let stopping = Instant::now();
    let summary = running.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "did not wait for the slow jobs"
    );
    assert_eq!((summary.released, summary.succeeded), (4, 0), "{summary:?}");
    let depth = mailbox.depth().await.expect("depth");
    assert_eq!(
        (depth.ready, depth.in_flight),
        (6, 0),
        "every job is claimable again: {depth:?}"
    );

    // A fresh worker (a restarted pod) answers every one of them.
    let fast = start_with(mailbox.clone(), config, JobResources::default());
    for i in 0..6 {
        let answer = reply(mailbox.as_ref(), &format!("j{i}")).await;
        assert_eq!(answer.status, ReplyStatus::Succeeded);
    }
    fast.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_agent_is_not_reloaded_until_its_file_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = dir.path().join("agent.wasm");
    std::fs::copy(guest("trivial"), &agent).expect("copy");
    let path = agent.to_str().expect("path");
    let job = |id: &str| {
        let mut envelope = Envelope::new(id, path);
        envelope.input = json!({"mode": "echo", "x": 1});
        envelope
    };
    let running = start(WorkerConfig {
        agent_recheck: ms(300),
        ..config()
    });
    let mailbox = running.mailbox.clone();
    send(mailbox.as_ref(), &job("before")).await;
    assert_eq!(
        reply(mailbox.as_ref(), "before").await.output.expect("output")["ok"],
        json!(true)
    );
    // Replace the file: within the recheck interval the cached component still serves.
    std::fs::copy(guest("adversary"), dir.path().join("next.wasm")).expect("copy");
    std::fs::rename(dir.path().join("next.wasm"), &agent).expect("rename");
    send(mailbox.as_ref(), &job("cached")).await;
    assert_eq!(
        reply(mailbox.as_ref(), "cached").await.output.expect("output")["ok"],
        json!(true)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    send(mailbox.as_ref(), &job("reloaded")).await;
    let reloaded = reply(mailbox.as_ref(), "reloaded").await.output.expect("output");
    assert_eq!(reloaded, json!({"mode": "echo", "x": 1}), "the adversary now answers");
    running.stop().await;
}

/// An agent no job used for `agent_idle` is forgotten, with its compiled
/// component, when another agent loads; its next job loads it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_is_forgotten_when_another_loads_and_loaded_again_when_needed() {
    let runtime = runtime();
    // The maintenance task looks at 3 s and 6 s, when the first agent is
    // not yet (or only just) idle: it is the other agent's load that
    // forgets it, unless the machine is slow.
    let running = start_forgetting_after(&runtime, ms(3_000));
    let mailbox = running.mailbox.clone();
    let job = |id: &str, agent: &str| envelope(id, agent, json!({"prompt": id}));
    let succeeded = |answer: ReplyDocument| assert_eq!(answer.status, ReplyStatus::Succeeded, "{answer:?}");

    send(mailbox.as_ref(), &job("first", "trivial")).await;
    succeeded(reply(mailbox.as_ref(), "first").await);
    assert_eq!(runtime.cache().len(), 1);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    send(mailbox.as_ref(), &job("other", "hello")).await;
    succeeded(reply(mailbox.as_ref(), "other").await);
    // Dropped off the async threads, so a moment later.
    eventually("the idle agent's component gone", Duration::from_secs(10), || async {
        (runtime.cache().len() == 1).then_some(())
    })
    .await;

    send(mailbox.as_ref(), &job("again", "trivial")).await;
    succeeded(reply(mailbox.as_ref(), "again").await);
    assert_eq!(runtime.cache().len(), 2, "hello was used within agent_idle");
    running.stop().await;
}

/// With no other agent loading, the maintenance task forgets an idle
/// agent within about twice `agent_idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_is_forgotten_even_when_no_other_agent_loads() {
    let runtime = runtime();
    // Long enough that the first job's reply comes well within it.
    let running = start_forgetting_after(&runtime, ms(3_000));
    let mailbox = running.mailbox.clone();
    let job = |id: &str| envelope(id, "trivial", json!({"prompt": id}));

    send(mailbox.as_ref(), &job("first")).await;
    assert_eq!(reply(mailbox.as_ref(), "first").await.status, ReplyStatus::Succeeded);
    assert_eq!(runtime.cache().len(), 1);
    eventually("the idle agent forgotten", Duration::from_secs(20), || async {
        runtime.cache().is_empty().then_some(())
    })
    .await;

    send(mailbox.as_ref(), &job("again")).await;
    assert_eq!(reply(mailbox.as_ref(), "again").await.status, ReplyStatus::Succeeded);
    assert_eq!(runtime.cache().len(), 1, "loaded again");
    running.stop().await;
}

/// A worker on `runtime` that forgets agents idle for `agent_idle`.
fn start_forgetting_after(runtime: &Runtime, agent_idle: HumanDuration) -> Running {
    start_on(
        runtime.clone(),
        Arc::new(MemoryMailbox::new(QUEUE)),
        WorkerConfig { agent_idle, ..config() },
        JobResources::default(),
        ReplyRoutes::registered_only(),
    )
}

/// One HTTP/1.1 GET on loopback: (status, content type, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_live_ready_and_metrics_and_goes_unready_while_draining() {
    let slow = Arc::new(ScriptedProvider::new(Script::repeating_text(
        "slow",
        Duration::from_millis(1_500),
    )));
    let runtime = runtime();
    let mailbox = Arc::new(MemoryMailbox::new(QUEUE));
    let running = start_on(
        runtime.clone(),
        mailbox.clone(),
        config(),
        JobResources::new(slow),
        ReplyRoutes::registered_only(),
    );
    let server = HealthServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        running.worker.health(),
        runtime.metrics().clone(),
    )
    .await
    .expect("health server");
    let addr = server.local_addr();
    assert_eq!(get(addr, "/health/live").await.0, 200);
    eventually("ready", Duration::from_secs(5), || async {
        (get(addr, "/health/ready").await.0 == 200).then_some(())
    })
    .await;
    send(mailbox.as_ref(), &envelope("slow", "hello", json!({}))).await;
    send_raw(mailbox.as_ref(), "junk", "junk").await;
    dead_letters(mailbox.as_ref(), 1).await;
    eventually("the slow job in flight", Duration::from_secs(5), || async {
        (mailbox.depth().await.expect("depth").in_flight == 1).then_some(())
    })
    .await;

    running.worker.shutdown();
    let (status, _, body) = get(addr, "/health/ready").await;
    assert_eq!((status, body.trim()), (503, "not ready: draining for shutdown"));
    assert_eq!(get(addr, "/health/live").await.0, 200, "live while draining");
    let summary = running.task.await.expect("task").expect("run");
    assert_eq!(summary.succeeded, 1, "the job in flight finished: {summary:?}");

    let (status, content_type, scrape) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, wink_host::telemetry::PROMETHEUS_TEXT_CONTENT_TYPE);
    for line in [
        r#"wink_mailbox_claimed_total{queue="jobs"} 2"#,
        r#"wink_mailbox_acked_total{queue="jobs"} 1"#,
        r#"wink_mailbox_dead_lettered_total{queue="jobs",reason="malformed_envelope"} 1"#,
        r#"wink_mailbox_depth{queue="jobs",state="dead"}"#,
    ] {
        assert!(scrape.contains(line), "missing {line} in:\n{scrape}");
    }
    assert_eq!(get(addr, "/nope").await.0, 404);
}

#[test]
fn the_worker_binary_serves_health_and_exits_0_on_sigterm() {
    let worker = WorkerProcess::spawn(&["--mailbox", "memory://", "--queue", "cli", "--no-cache"]);
    assert_eq!(worker.status("/health/live"), 200);
    worker.wait_ready();
    assert_eq!(worker.status("/metrics"), 200);
    worker.signal("TERM");
    let (status, logs) = worker.wait(Duration::from_secs(20));
    assert!(status.success(), "{status}: {logs:#?}");
    assert!(logs.iter().any(|l| l.contains("worker stopped")), "{logs:#?}");
}

/// One async thread per core, but no more than the jobs that run at once;
/// `TOKIO_WORKER_THREADS` overrides.
#[test]
fn the_worker_binary_runs_no_more_async_threads_than_it_runs_jobs() {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // The configuration comes through a pipe, which can be read only once:
    // the worker must not read it again once it knows its threads.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wink.toml");
    let made = std::process::Command::new("mkfifo")
        .arg(&config)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let writer = std::thread::spawn({
        let config = config.clone();
        move || std::fs::write(config, "[worker]\nconcurrency = 1\n").expect("write the config")
    });
    let from_file = format!("--config={}", config.display());
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&[&str], Env, usize); 4] = [
        (&["--concurrency", "1"], &[], 1),
        (&["--concurrency", "64"], &[], cores.min(64)),
        (&[&from_file], &[], 1),
        (&["--concurrency", "1"], &[("TOKIO_WORKER_THREADS", "3")], 3),
    ];
    for (args, env, expected) in cases {
        let worker = WorkerProcess::spawn_with_env(&[&["--mailbox", "memory://", "--no-cache"], args].concat(), env);
        worker.wait_ready();
        worker.signal("TERM");
        let (status, logs) = worker.wait(Duration::from_secs(20));
        assert!(status.success(), "{status}: {logs:#?}");
        let started = logs
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|record| record["fields"]["message"] == "worker started")
            .unwrap_or_else(|| panic!("no `worker started` line in {logs:#?}"));
        assert_eq!(
            started["fields"]["async_threads"], expected,
            "{args:?}, {env:?}: {started}"
        );
    }
    writer.join().expect("the config was read");
}

#[test]
fn a_bad_tokio_worker_threads_is_a_one_line_error_not_a_panic() {
    for value in ["0", "two", ""] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wink-host"))
            .args(["worker", "--health-port", "0", "--no-cache"])
            .env("TOKIO_WORKER_THREADS", value)
            .env("WINK_LOG", "warn")
            .output()
            .expect("run wink-host worker");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{value:?}: {err}");
        assert_eq!(
            err.trim(),
            format!("error: TOKIO_WORKER_THREADS `{value}` is not a number of threads above zero"),
        );
    }
}

#[test]
fn bad_worker_options_exit_non_zero_with_a_one_line_reason() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["--lease", "1s", "--heartbeat", "1s"],
            "heartbeat 1000ms must be at most half the lease",
        ),
        (
            &["--mailbox", "nats://127.0.0.1:4222"],
            "unsupported mailbox URL scheme `nats`",
        ),
        (&["--queue", "no spaces"], "queue name `no spaces`"),
        (
            &["--s3-endpoint", "minio:9000"],
            "worker option s3_endpoint `minio:9000` is not an S3 endpoint URL",
        ),
        (
            &["--reply-queues", "replies,a*b"],
            "reply queue `a*b`: queue name `a*b` must be 1-128 characters",
        ),
    ];
    for (args, expected) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wink-host"))
            .arg("worker")
            .args(["--health-port", "0", "--no-cache"])
            .args(args)
            .env("WINK_LOG", "warn")
            .output()
            .expect("run wink-host worker");
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        let reason = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_default();
        assert!(reason.contains(expected), "{args:?}: {err}");
    }
}
