//! Jobs for the worker tests: envelopes of real guests, sending them, and
//! waiting for what a worker does with them, on any mailbox.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio::task::JoinHandle;
use wink_host::mailbox::{DeadLetter, Envelope, Mailbox, MemoryMailbox, Sent};
use wink_host::policy::HumanDuration;
use wink_host::runtime::Runtime;
use wink_host::worker::{
    JobResources, ReplyDocument, ReplyRoutes, ReplyStatus, Worker, WorkerConfig, WorkerError, WorkerSummary,
};

/// A worker running on its own task over an in-memory queue.
pub struct Running<M = MemoryMailbox> {
    pub mailbox: Arc<M>,
    pub worker: Worker,
    pub task: JoinHandle<Result<WorkerSummary, WorkerError>>,
}

impl<M: Mailbox + 'static> Running<M> {
    pub fn start(
        runtime: Runtime,
        mailbox: Arc<M>,
        config: WorkerConfig,
        resources: JobResources,
        routes: ReplyRoutes,
    ) -> Self {
        let worker = Worker::new(runtime, mailbox.clone(), config, resources, routes).expect("worker");
        let task = tokio::spawn({
            let worker = worker.clone();
            async move { worker.run().await }
        });
        Self { mailbox, worker, task }
    }

    /// Shut the worker down; what it did.
    pub async fn stop(self) -> WorkerSummary {
        self.worker.shutdown();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the worker stops")
            .expect("worker task")
            .expect("worker run")
    }
}

pub fn ms(millis: u64) -> HumanDuration {
    HumanDuration(Duration::from_millis(millis))
}

/// A job for the built guest `agent`.
pub fn envelope(request_id: &str, agent: &str, input: serde_json::Value) -> Envelope {
    let mut envelope = Envelope::new(request_id, super::guest(agent).to_str().expect("path"));
    envelope.input = input;
    envelope
}

pub async fn send(mailbox: &dyn Mailbox, envelope: &Envelope) -> Sent {
    mailbox
        .send(&envelope.request_id, Bytes::from(envelope.to_bytes()))
        .await
        .expect("send")
}

/// Poll `condition` until it holds, failing after `limit`.
pub async fn eventually<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> Fut,
) -> T {
    let give_up = Instant::now() + limit;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(Instant::now() < give_up, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The reply stored for `request_id`, if any yet.
pub async fn stored_reply(mailbox: &dyn Mailbox, request_id: &str) -> Option<ReplyDocument> {
    let body = mailbox.reply(request_id).await.expect("reply")?;
    Some(ReplyDocument::parse(&body).expect("reply document"))
}

/// The reply to `request_id`, once it is stored.
pub async fn reply(mailbox: &dyn Mailbox, request_id: &str) -> ReplyDocument {
    eventually(&format!("the reply to {request_id}"), Duration::from_secs(30), || {
        stored_reply(mailbox, request_id)
    })
    .await
}

/// The dead letters, once there are at least `count`.
pub async fn dead_letters(mailbox: &dyn Mailbox, count: usize) -> Vec<DeadLetter> {
    eventually(&format!("{count} dead letters"), Duration::from_secs(30), || async {
        let dead = mailbox.dead_letters(100).await.expect("dead letters");
        (dead.len() >= count).then_some(dead)
    })
    .await
}

/// The dead letter of message `id`.
pub fn dead_letter<'a>(dead: &'a [DeadLetter], id: &str) -> &'a DeadLetter {
    dead.iter()
        .find(|d| d.message_id == id)
        .unwrap_or_else(|| panic!("{id} is not dead-lettered: {dead:?}"))
}

/// The model script of [`budgeted_job`]: turn 1 answers at once; turn 2
/// outlasts the job's 500 ms timeout, a retryable failure. A retry replays
/// turn 1, spending the second of two turns only if it sees the first
/// attempt's spend, so its turn 2 is refused by the budget instead of hanging.
pub fn budgeted_script() -> serde_json::Value {
    json!({"responses": [
        {"content": [{"text": "one"}], "usage": {"input_tokens": 10, "output_tokens": 5}},
        {"content": [{"text": "two"}], "delay_ms": 20_000},
    ]})
}

/// Request `budgeted`: two model turns at most, 500 ms per attempt.
pub fn budgeted_job() -> Envelope {
    let mut job = envelope("budgeted", "adversary", json!({"mode": "models", "count": 2}));
    job.budget.max_turns = Some(2);
    job.budget.timeout = Some(ms(500));
    job
}

/// `answer` is [`budgeted_job`]'s, answered on its second attempt after the
/// budget, carried over from the first, refused the last turn.
pub fn assert_budget_carried_over(answer: &ReplyDocument) {
    assert_eq!(answer.status, ReplyStatus::Succeeded, "{answer:?}");
    assert_eq!(answer.attempts, 2, "{answer:?}");
    let output = answer.output.as_ref().expect("output");
    assert_eq!(output["texts"], json!(["one"]));
    assert!(
        output["error"]
            .as_str()
            .unwrap_or_default()
            .contains("turns: limit 2, spent 2"),
        "{output}"
    );
}
