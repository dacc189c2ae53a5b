//! Workers on a real `redis-server`: the usage ledger shared through Redis
//! carries a request's spend to the worker it is redelivered to, and
//! `wink-host worker` processes killed with SIGKILL or stopped with SIGTERM
//! in the middle of jobs lose none and answer each once.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::worker_jobs::*;
use common::worker_process::WorkerProcess;
use common::*;
use serde_json::json;
use wink_host::mailbox::{self, Depth, Envelope, Mailbox, Sent};
use wink_host::model::{ModelPolicy, Script, ScriptedProvider};
use wink_host::policy::HumanDuration;
use wink_host::worker::{JobResources, ReplyDocument, ReplyRoutes, ReplyStatus, Worker, WorkerConfig};

const QUEUE: &str = "jobs";

/// A model call that answers after ten minutes: a job parked in it is
/// mid-run for as long as any test lasts.
const PARKED_MODEL: &str = r#"{"responses": [{"content": [{"text": "parked"}], "delay_ms": 600000}]}"#;

// ---- the shared usage ledger ------------------------------------------------

fn in_process_config(worker_id: &str, backoff: HumanDuration) -> WorkerConfig {
    let limits = test_limits();
    WorkerConfig {
        worker_id: Some(worker_id.into()),
        concurrency: 1,
        backoff_base: backoff,
        backoff_max: backoff,
        poll_wait: ms(50),
        reap_interval: ms(100),
        job_timeout: HumanDuration(limits.deadline),
        fuel: limits.fuel,
        memory: wink_host::policy::ByteSize(limits.memory_bytes),
        ..WorkerConfig::default()
    }
}

/// A worker on queue [`QUEUE`] of the Redis at `url`, with the ledger
/// `mailbox::open_usage_ledger` picks for that URL and a fresh scripted model.
async fn start_worker(url: &str, config: WorkerConfig, script: &serde_json::Value) -> Worker {
    let mailbox = mailbox::open(url, QUEUE).await.expect("redis mailbox");
    let model = Arc::new(ScriptedProvider::new(
        Script::parse(&script.to_string()).expect("script"),
    ));
    let resources = JobResources {
        model_policy: ModelPolicy {
            ledger: mailbox::open_usage_ledger(url).await.expect("usage ledger"),
            ..ModelPolicy::default()
        },
        ..JobResources::new(model)
    };
    let worker = Worker::new(runtime(), mailbox, config, resources, ReplyRoutes::registered_only()).expect("worker");
    tokio::spawn({
        let worker = worker.clone();
        async move { worker.run().await }
    });
    worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_redelivered_to_another_worker_continues_the_spend_of_its_first_attempt() {
    let server = RedisServer::start();
    let url = server.url();
    let script = budgeted_script();
    // The first worker's retry delay (at least half of 4 s) leaves time to
    // stop it before it could claim the job again itself.
    let first = start_worker(&url, in_process_config("first", ms(4_000)), &script).await;
    let producer = mailbox::open(&url, QUEUE).await.expect("redis mailbox");
    assert_eq!(send(producer.as_ref(), &budgeted_job()).await, Sent::Enqueued);

    eventually("the first attempt to fail", Duration::from_secs(30), || async {
        (first.summary().retried == 1).then_some(())
    })
    .await;
    first.shutdown();
    let ledger = mailbox::open_usage_ledger(&url).await.expect("usage ledger");
    // The call the deadline cut short is charged from a task of its own.
    let spent = eventually("the first attempt's spend in Redis", Duration::from_secs(5), || async {
        let spent = ledger.spent("budgeted").await.expect("spent");
        (spent.input_tokens == 11).then_some(spent)
    })
    .await;
    assert_eq!(
        spent.turns, 1,
        "one answered turn of 10 input tokens, and the cut-short call's one: {spent:?}"
    );

    let second = start_worker(&url, in_process_config("second", ms(50)), &script).await;
    let answer = reply(producer.as_ref(), "budgeted").await;
    assert_budget_carried_over(&answer);
    assert_eq!(answer.worker_id, "second");
    assert_eq!(
        (
            answer.spent.turns,
            answer.spent.input_tokens,
            answer.spent.output_tokens
        ),
        (2, 21, 10),
        "{:?}",
        answer.spent
    );
    second.shutdown();
    assert_eq!(second.summary().retried, 0, "{:?}", second.summary());
    // A finished request is forgotten (deleted in the background).
    eventually(
        "the answered request's usage to be deleted",
        Duration::from_secs(5),
        || async { (ledger.spent("budgeted").await.expect("spent").turns == 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn only_redis_mailboxes_share_their_ledger() {
    // `memory://` and `sqs://` get a ledger in this process: nothing to
    // connect to, so opening one cannot fail.
    for url in ["memory://", "sqs://127.0.0.1:1/000000000000"] {
        let ledger = mailbox::open_usage_ledger(url).await.expect("in-process ledger");
        assert!(
            format!("{ledger:?}").starts_with("MemoryUsageLedger"),
            "{url}: {ledger:?}"
        );
    }
    let server = RedisServer::start();
    let ledger = mailbox::open_usage_ledger(&server.url()).await.expect("redis ledger");
    assert!(format!("{ledger:?}").starts_with("RedisUsageLedger"), "{ledger:?}");
    // Free port, nothing listening: a clear error naming the URL.
    let err = mailbox::open_usage_ledger("redis://127.0.0.1:1")
        .await
        .expect_err("no Redis there");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

// ---- worker processes killed and stopped mid-job ------------------------------

/// The test's side of the queue: a producer and an observer on a
/// current-thread runtime, beside blocking waits for the worker processes.
struct Queue {
    tokio: tokio::runtime::Runtime,
    mailbox: Arc<dyn Mailbox>,
}

impl Queue {
    fn open(server: &RedisServer) -> Self {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        let mailbox = tokio
            .block_on(mailbox::open(&server.url(), QUEUE))
            .expect("redis mailbox");
        Self { tokio, mailbox }
    }

    fn send(&self, envelope: &Envelope) -> Sent {
        self.tokio.block_on(send(self.mailbox.as_ref(), envelope))
    }

    fn depth(&self) -> Depth {
        self.tokio.block_on(self.mailbox.depth()).expect("depth")
    }

    fn reply(&self, request_id: &str) -> Option<ReplyDocument> {
        self.tokio.block_on(stored_reply(self.mailbox.as_ref(), request_id))
    }

    fn wait_for<T>(&self, what: &str, limit: Duration, mut condition: impl FnMut(&Self) -> Option<T>) -> T {
        let give_up = Instant::now() + limit;
        loop {
            if let Some(value) = condition(self) {
                return value;
            }
            assert!(Instant::now() < give_up, "timed out after {limit:?} waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Worker flags shared by the process tests: the test Redis, short leases
/// so a killed worker's job comes back within seconds, and the tests'
/// compiled-component cache.
fn worker_args<'a>(url: &'a str, cache: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--mailbox",
        url,
        "--queue",
        QUEUE,
        "--lease",
        "2s",
        "--heartbeat",
        "500ms",
        "--reap-interval",
        "200ms",
        "--cache-dir",
        cache,
    ];
    args.extend_from_slice(extra);
    args
}

fn parked_model_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("parked.json");
    std::fs::write(&path, PARKED_MODEL).expect("write script");
    format!("scripted:{}", path.display())
}

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_job_of_a_killed_worker_process_is_finished_by_another_and_answered_once() {
    let server = RedisServer::start();
    let url = server.url();
    let queue = Queue::open(&server);
    let dir = tempfile::tempdir().expect("temp dir");
    let parked = parked_model_file(&dir);
    let cache = guest_dir().join("test-cache").display().to_string();

    let doomed = WorkerProcess::spawn(&worker_args(
        &url,
        &cache,
        &["--worker-id", "doomed", "--model", &parked],
    ));
    doomed.wait_ready();
    assert_eq!(
        queue.send(&envelope("crash-1", "hello", json!({"prompt": "from the test"}))),
        Sent::Enqueued
    );
    queue.wait_for("the job to be claimed", Duration::from_secs(20), |q| {
        (q.depth().in_flight == 1).then_some(())
    });
    // Past a heartbeat: the job is running, its lease extended, when the
    // process dies without a word.
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(
        queue.reply("crash-1").is_none(),
        "the parked model cannot have answered"
    );
    assert!(!doomed.kill().success(), "SIGKILL");
    assert_eq!(
        queue.depth().in_flight,
        1,
        "the dead worker's lease still holds the job"
    );

    let rescuer = WorkerProcess::spawn(&worker_args(&url, &cache, &["--worker-id", "rescuer"]));
    let answer = queue.wait_for("the reply", Duration::from_secs(25), |q| q.reply("crash-1"));
    assert_eq!(answer.status, ReplyStatus::Succeeded, "{answer:?}");
    assert_eq!(
        (answer.attempts, answer.worker_id.as_str()),
        (2, "rescuer"),
        "{answer:?}"
    );
    assert_ne!(
        answer.output,
        Some(json!("parked")),
        "answered by the rescuer's echo model"
    );

    let replies = server.cli(&["--scan", "--pattern", &format!("{{wink:{QUEUE}}}:reply:*")]);
    assert_eq!(
        replies.lines().collect::<Vec<_>>(),
        [format!("{{wink:{QUEUE}}}:reply:crash-1")],
        "one stored reply"
    );
    assert_eq!(
        queue.depth(),
        Depth::default(),
        "nothing left queued, in flight or dead"
    );
    let (_, metrics) = rescuer.get("/metrics");
    assert_eq!(
        counter(&metrics, &format!("wink_mailbox_acked_total{{queue=\"{QUEUE}\"}}")),
        1.0,
        "acked once:\n{metrics}"
    );
    assert_eq!(
        queue.send(&envelope("crash-1", "hello", json!({"prompt": "again"}))),
        Sent::Duplicate,
        "the answered request id is remembered"
    );
    rescuer.signal("TERM");
    let (status, logs) = rescuer.wait(Duration::from_secs(20));
    assert!(status.success(), "{status}: {logs:#?}");
}

#[test]
fn a_worker_process_stopped_with_sigterm_exits_0_and_loses_no_job() {
    let server = RedisServer::start();
    let url = server.url();
    let queue = Queue::open(&server);
    let dir = tempfile::tempdir().expect("temp dir");
    let parked = parked_model_file(&dir);
    let cache = guest_dir().join("test-cache").display().to_string();
    let worker = WorkerProcess::spawn(&worker_args(
        &url,
        &cache,
        &[
            "--worker-id",
            "stopping",
            "--model",
            &parked,
            "--concurrency",
            "2",
            "--grace-period",
            "1s",
        ],
    ));
    worker.wait_ready();

    // Two jobs answered before the signal (the trivial agent makes no model
    // call), two parked in the model when it comes, two never claimed.
    let fast = ["fast-0", "fast-1"];
    for id in fast {
        assert_eq!(queue.send(&envelope(id, "trivial", json!({"id": id}))), Sent::Enqueued);
    }
    queue.wait_for("the fast replies", Duration::from_secs(20), |q| {
        fast.iter().all(|id| q.reply(id).is_some()).then_some(())
    });
    let parked_ids = ["parked-0", "parked-1", "parked-2", "parked-3"];
    for id in parked_ids {
        assert_eq!(
            queue.send(&envelope(id, "hello", json!({"prompt": id}))),
            Sent::Enqueued
        );
    }
    queue.wait_for("two jobs in flight", Duration::from_secs(20), |q| {
        let depth = q.depth();
        (depth.in_flight == 2 && depth.ready == 2).then_some(())
    });
    std::thread::sleep(Duration::from_millis(700));
    worker.signal("TERM");
    let (status, logs) = worker.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{logs:#?}");

    for id in fast {
        let answer = queue.reply(id).expect("answered before the signal");
        assert_eq!(
            (answer.status, answer.attempts),
            (ReplyStatus::Succeeded, 1),
            "{answer:?}"
        );
    }
    for id in parked_ids {
        let early = queue.reply(id);
        assert!(early.is_none(), "{id} was never finished: {early:?}");
    }
    assert_eq!(
        queue.depth(),
        Depth {
            ready: 4,
            ..Depth::default()
        },
        "every unfinished job is back in ready, none dead or delayed"
    );
    // The two released jobs keep the delivery they used up; the two never
    // claimed have none.
    let deliveries = queue
        .tokio
        .block_on(queue.mailbox.claim(10, Duration::from_secs(30), Duration::ZERO))
        .expect("claim");
    let mut attempts: Vec<(String, u32)> = deliveries
        .iter()
        .map(|d| {
            let envelope = Envelope::parse(&d.payload).expect("envelope");
            (envelope.request_id, d.attempt)
        })
        .collect();
    attempts.sort();
    let mut by_attempt: Vec<u32> = attempts.iter().map(|(_, attempt)| *attempt).collect();
    by_attempt.sort_unstable();
    assert_eq!(by_attempt, [1, 1, 2, 2], "{attempts:?}");
    let ids: Vec<&str> = attempts.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, parked_ids, "{attempts:?}");
}

/// Callers that each name their own reply queue get their replies there
/// over the worker's own connection: the worker does not open one per queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_many_reply_queues_share_the_workers_connection() {
    let server = RedisServer::start();
    let url = server.url();
    let mailbox = mailbox::open(&url, QUEUE).await.expect("redis mailbox");
    let config = WorkerConfig {
        concurrency: 4,
        ..in_process_config("replier", ms(50))
    };
    let routes = ReplyRoutes::beside(mailbox.clone(), url.clone());
    let worker = Worker::new(runtime(), mailbox.clone(), config, JobResources::default(), routes).expect("worker");
    tokio::spawn({
        let worker = worker.clone();
        async move { worker.run().await }
    });
    let clients = |server: &RedisServer| server.cli(&["CLIENT", "LIST"]).lines().count();
    // The worker's connections, opened as it starts claiming.
    let first = envelope("warm-up", "trivial", json!({}));
    send(mailbox.as_ref(), &first).await;
    reply(mailbox.as_ref(), "warm-up").await;
    let before = clients(&server);

    for i in 0..40 {
        let mut job = envelope(&format!("caller-{i}"), "trivial", json!({}));
        job.reply_to = Some(format!("replies-{i}"));
        send(mailbox.as_ref(), &job).await;
    }
    for i in 0..40 {
        reply(mailbox.as_ref(), &format!("caller-{i}")).await;
    }
    let replies = mailbox::open(&url, "replies-39").await.expect("reply queue");
    eventually("the reply on its queue", Duration::from_secs(5), || async {
        (replies.depth().await.expect("depth").ready == 1).then_some(())
    })
    .await;
    // The `replies` handle above is one more, and a claimer may have opened
    // another blocking connection; a connection per reply queue would be 40.
    let after = clients(&server);
    assert!(after <= before + 3, "{before} connections before, {after} after");
    worker.shutdown();
}
