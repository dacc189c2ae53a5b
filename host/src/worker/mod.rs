//! The worker: claims jobs from a mailbox, runs them in the sandbox, answers
//! them exactly once, and gives back what it cannot finish.
//!
//! One claim loop fills the worker up to its concurrency with batch claims;
//! each delivery runs as its own tokio task, which extends its lease on a
//! heartbeat while the job runs, then either queues its reply for the next
//! batch ack, gives the message back with a backoff, or dead-letters it. A
//! maintenance task reaps lapsed leases and polls the queue depth. Rules and
//! options: docs/mailbox.md, "Worker".

mod acker;
mod agents;
mod config;
mod health;
mod process;
mod reply;
mod routes;
mod s3;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::mailbox::{Delivery, Mailbox};
use crate::model::{ModelPolicy, ModelProvider, ScriptedProvider};
use crate::policy::Policy;
use crate::runtime::{Limits, Runtime};
use crate::session::{MemorySessionStore, SessionStore};
use crate::telemetry::{BatchOperation, BatchSpans, SpanLink};
use crate::tools::ToolComponent;

pub use config::WorkerConfig;
pub use health::{Health, HealthServer};
pub use process::{DEADLINE_EXCEEDED, is_retryable};
pub use reply::{REPLY_VERSION, ReplyDocument, ReplyError, ReplySpent, ReplyStatus, ReplyTimings, ReplyUsage};
pub use routes::{ReplyQueues, ReplyRoutes};

use acker::AckItem;
use agents::Agents;
use s3::S3Settings;

/// What every job of a worker may use besides its own component and input.
pub struct JobResources {
    /// Serves every job's model calls.
    pub model: Arc<dyn ModelProvider>,
    /// Tool components; each agent gets those its policy grants (all of
    /// them without a policy).
    pub tools: Vec<ToolComponent>,
    /// Per-agent grants; without one, every agent gets every tool and the
    /// host-wide model allowlist and budget.
    pub policy: Option<Policy>,
    /// Host-wide model allowlist and budget (a cap on the policy's), prices,
    /// and the usage ledger: one ledger for all jobs, so a redelivered
    /// request continues from what it already spent.
    pub model_policy: ModelPolicy,
    /// Budget of a job in dimensions that its policy, the caps above and its
    /// envelope leave unset (the configuration file's `[budget]`).
    pub budget_defaults: crate::policy::Budget,
    /// Session checkpoints, by request id, read again by a redelivered job.
    pub sessions: Arc<dyn SessionStore>,
    /// The AWS SDK configuration `s3://` agents are fetched with; none:
    /// `aws-config`'s default chain, loaded on the first such job.
    pub aws_config: Option<aws_config::SdkConfig>,
}

impl std::fmt::Debug for JobResources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobResources")
            .field("model", &self.model)
            .field("tools", &self.tools)
            .field("policy", &self.policy.is_some())
            .field("model_policy", &self.model_policy)
            .finish_non_exhaustive()
    }
}

impl JobResources {
    /// `model` for every job, no tools, no policy, no budget, in-memory
    /// ledger and sessions.
    pub fn new(model: Arc<dyn ModelProvider>) -> Self {
        Self {
            model,
            tools: Vec::new(),
            policy: None,
            model_policy: ModelPolicy::default(),
            budget_defaults: crate::policy::Budget::default(),
            sessions: Arc::new(MemorySessionStore::default()),
            aws_config: None,
        }
    }
}

impl Default for JobResources {
    /// The echo model and nothing else.
    fn default() -> Self {
        Self::new(Arc::new(ScriptedProvider::echo()))
    }
}

/// Why a worker cannot start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// An option is out of range.
    #[error("{0}")]
    Config(String),
    /// [`Worker::run`] was called twice.
    #[error("this worker has already run")]
    AlreadyRan,
}

/// What a worker did, counted over its whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerSummary {
    /// Deliveries claimed.
    pub claimed: u64,
    /// Claims that delivered at least one message: `claimed /
    /// batches_claimed` is how many messages a claim fetched on average.
    pub batches_claimed: u64,
    /// Jobs answered with `status: succeeded`.
    pub succeeded: u64,
    /// Jobs answered with `status: failed` (final failures).
    pub failed: u64,
    /// Deliveries given back for a retry.
    pub retried: u64,
    /// Deliveries moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Deliveries given back unfinished at shutdown.
    pub released: u64,
    /// Jobs dropped because their lease was lost (another worker answers).
    pub lease_lost: u64,
}

#[derive(Debug, Default)]
struct Counters {
    claimed: AtomicU64,
    batches_claimed: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    released: AtomicU64,
    lease_lost: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WorkerSummary {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WorkerSummary {
            claimed: get(&self.claimed),
            batches_claimed: get(&self.batches_claimed),
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            released: get(&self.released),
            lease_lost: get(&self.lease_lost),
        }
    }
}

/// Claims, runs and answers jobs from one mailbox queue. Cheap to clone:
/// clones share the worker, so one can [`run`](Self::run) it while another
/// asks it to [`shut down`](Self::shutdown).
#[derive(Debug, Clone)]
pub struct Worker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    id: String,
    config: WorkerConfig,
    limits: Limits,
    runtime: Runtime,
    mailbox: Arc<dyn Mailbox>,
    resources: Arc<JobResources>,
    agents: Agents,
    routes: ReplyRoutes,
    health: Arc<Health>,
    counters: Counters,
    /// Jobs running now.
    in_flight: AtomicUsize,
    /// Woken when a full worker gets a free slot (the claim loop waits on it).
    slot_freed: Notify,
    /// Woken whenever a job ends (the drain waits on it).
    job_ended: Notify,
    job_seq: AtomicU64,
    acks: mpsc::Sender<AckItem>,
    ack_queue: Mutex<Option<mpsc::Receiver<AckItem>>>,
    /// Records claims and acks as spans, when they are exported.
    batch_spans: Option<BatchSpans>,
    /// Stop claiming and drain.
    shutdown: CancellationToken,
    /// Give every job in flight back now.
    release: CancellationToken,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Agents")
    }
}

impl Worker {
    /// A worker for `mailbox`'s queue; `routes` opens the queues named by
    /// envelopes' `reply_to`. Without a `worker_id` in `config` the worker
    /// takes the runtime's; with one, the jobs it runs name it in their
    /// spans too, so job spans and worker logs always name the same one.
    /// Its claims and acks are spans when the tracing subscriber current
    /// here exports spans (and `WINK_TRACE_MAILBOX_SPANS` is not false).
    pub fn new(
        runtime: Runtime,
        mailbox: Arc<dyn Mailbox>,
        config: WorkerConfig,
        resources: JobResources,
        routes: ReplyRoutes,
    ) -> Result<Self, WorkerError> {
        config.validate().map_err(WorkerError::Config)?;
        let runtime = match &config.worker_id {
            Some(id) => runtime.with_worker_id(id),
            None => runtime,
        };
        let id = runtime.worker_id().to_owned();
        let resources = Arc::new(resources);
        let (acks, ack_queue) = mpsc::channel(config.ack_batch.max(config.concurrency) * 2);
        let batch_spans = BatchSpans::current(mailbox.queue());
        Ok(Self {
            shared: Arc::new(Shared {
                health: Arc::new(Health::new(config.ready_threshold.0)),
                agents: Agents::new(
                    runtime.clone(),
                    resources.clone(),
                    S3Settings {
                        endpoint: config.s3_endpoint.clone(),
                        region: config.s3_region.clone(),
                        base: resources.aws_config.clone(),
                    },
                    config.agent_recheck.0,
                    config.agent_idle.0,
                ),
                limits: config.job_limits(),
                id,
                config,
                runtime,
                mailbox,
                resources,
                routes,
                counters: Counters::default(),
                in_flight: AtomicUsize::new(0),
                slot_freed: Notify::new(),
                job_ended: Notify::new(),
                job_seq: AtomicU64::new(0),
                acks,
                ack_queue: Mutex::new(Some(ack_queue)),
                batch_spans,
                shutdown: CancellationToken::new(),
                release: CancellationToken::new(),
            }),
        })
    }

    /// This worker's id, as in logs, spans and replies.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// What the health server reports.
    pub fn health(&self) -> Arc<Health> {
        self.shared.health.clone()
    }

    /// The runtime jobs run in (and whose metrics the worker records into).
    pub fn runtime(&self) -> &Runtime {
        &self.shared.runtime
    }

    /// Stop claiming and drain: jobs in flight get the grace period to
    /// finish, then are given back. [`run`](Self::run) returns when done.
    pub fn shutdown(&self) {
        self.shared.health.set_draining();
        self.shared.shutdown.cancel();
    }

    /// Give every job in flight back to the queue now, without waiting for
    /// the grace period (a second signal).
    pub fn release_all(&self) {
        self.shutdown();
        self.shared.release.cancel();
    }

    /// What the worker has done so far.
    pub fn summary(&self) -> WorkerSummary {
        self.shared.counters.snapshot()
    }

    /// Claim and run jobs until [`shutdown`](Self::shutdown), then drain.
    pub async fn run(&self) -> Result<WorkerSummary, WorkerError> {
        let ack_queue = self
            .shared
            .ack_queue
            .lock()
            .await
            .take()
            .ok_or(WorkerError::AlreadyRan)?;
        let shared = &self.shared;
        tracing::info!(
            worker_id = %shared.id,
            queue = shared.mailbox.queue(),
            concurrency = shared.config.concurrency,
            async_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            reply_queues = %shared.config.reply_queues,
            "worker started"
        );
        let acker = tokio::spawn(acker::run(shared.clone(), ack_queue));
        let maintenance = tokio::spawn(maintain(shared.clone()));
        shared.probe_depth().await;
        shared.claim_loop().await;
        shared.drain().await;
        let (stopped, stop) = tokio::sync::oneshot::channel();
        if shared.acks.send(AckItem::Stop(stopped)).await.is_ok() {
            let _ = stop.await;
        }
        maintenance.abort();
        let _ = acker.await;
        let summary = shared.counters.snapshot();
        tracing::info!(worker_id = %shared.id, ?summary, "worker stopped");
        Ok(summary)
    }
}

impl Shared {
    fn queue(&self) -> &str {
        self.mailbox.queue()
    }

    /// Claim up to the free capacity, run each delivery as a task, repeat
    /// until shutdown. The loop heartbeats readiness on every turn.
    ///
    /// When only a few slots are free while many jobs run, the loop first
    /// yields, letting jobs that are about to finish do so: one claim then
    /// fetches a batch instead of one message per finished job.
    async fn claim_loop(self: &Arc<Self>) {
        let concurrency = self.config.concurrency;
        let batch = claim_batch(concurrency);
        let poll_wait = self.config.poll_wait.0;
        while !self.shutdown.is_cancelled() {
            self.health.loop_beat();
            let in_flight = self.in_flight.load(Ordering::Acquire);
            let free = concurrency.saturating_sub(in_flight);
            if free == 0 {
                tokio::select! {
                    () = self.slot_freed.notified() => {}
                    () = self.shutdown.cancelled() => {}
                    () = tokio::time::sleep(poll_wait) => {}
                }
                continue;
            }
            if free < batch && in_flight > 0 {
                tokio::task::yield_now().await;
            }
            let free = concurrency.saturating_sub(self.in_flight.load(Ordering::Acquire));
            let call = self.batch_spans.as_ref().map(BatchSpans::start);
            match self.mailbox.claim(free, self.config.lease.0, poll_wait).await {
                Ok(batch) => {
                    self.health.mailbox_answered();
                    // A claim that found nothing leaves no span: idle
                    // workers poll all the time.
                    let claim = call
                        .filter(|_| !batch.is_empty())
                        .map(|call| call.end(BatchOperation::Claim, batch.len(), 0, []));
                    self.dispatch(batch, claim);
                }
                Err(err) => {
                    self.health.mailbox_failed();
                    tracing::warn!(queue = self.queue(), error = %err, "claim failed; retrying");
                    tokio::select! {
                        () = self.shutdown.cancelled() => {}
                        () = tokio::time::sleep(poll_wait) => {}
                    }
                }
            }
        }
    }

    /// Run each delivery of a claim in a task of its own; `claim` links
    /// their spans to the claim's.
    fn dispatch(self: &Arc<Self>, batch: Vec<Delivery>, claim: Option<SpanLink>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        self.runtime.metrics().mailbox_claimed(self.queue(), n);
        self.counters.claimed.fetch_add(n, Ordering::Relaxed);
        self.counters.batches_claimed.fetch_add(1, Ordering::Relaxed);
        for delivery in batch {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            let shared = self.clone();
            let claim = claim.clone();
            // Boxed: a job's future is some 16 KiB, just under the size
            // from which tokio boxes a task's future itself in a release
            // build, and a task holding it inline copied all of it about ten
            // times (at spawn, and at each change of the task's stage): a
            // trivial job's CPU time fell by 1-2 µs once boxed
            // (docs/benchmarks.md).
            tokio::spawn(Box::pin(async move {
                let _slot = Slot(&shared);
                shared.process(delivery, claim).await;
            }));
        }
    }

    /// Wait for jobs in flight for the grace period, then release the rest.
    async fn drain(&self) {
        let in_flight = self.in_flight.load(Ordering::Acquire);
        if in_flight > 0 {
            tracing::info!(in_flight, grace_period = %self.config.grace_period, "draining jobs in flight");
        }
        let grace_over = tokio::time::Instant::now() + self.config.grace_period.0;
        let finished = self.wait_idle(Some(grace_over)).await;
        if !finished {
            tracing::warn!(
                in_flight = self.in_flight.load(Ordering::Acquire),
                "grace period over; giving jobs in flight back to the queue"
            );
            self.release.cancel();
            self.wait_idle(None).await;
        }
    }

    /// Whether every job ended before `until`.
    async fn wait_idle(&self, until: Option<tokio::time::Instant>) -> bool {
        loop {
            let ended = self.job_ended.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return true;
            }
            let released = self.release.cancelled();
            match until {
                Some(until) => tokio::select! {
                    () = ended => {}
                    () = tokio::time::sleep_until(until) => return self.in_flight.load(Ordering::Acquire) == 0,
                    () = released, if !self.release.is_cancelled() => return false,
                },
                None => ended.await,
            }
        }
    }

    /// Read the queue depth into the metrics; a successful read also counts
    /// as the mailbox answering.
    async fn probe_depth(&self) {
        match self.mailbox.depth().await {
            Ok(depth) => {
                self.health.mailbox_answered();
                self.runtime.metrics().mailbox_depth(
                    self.queue(),
                    depth.ready,
                    depth.in_flight,
                    depth.delayed,
                    depth.dead,
                );
            }
            Err(err) => {
                self.health.mailbox_failed();
                tracing::warn!(queue = self.queue(), error = %err, "cannot read the queue depth");
            }
        }
    }

    fn next_job_id(&self) -> String {
        let seq = self.job_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{seq}", self.id)
    }
}

/// Counts a running job; frees its capacity however the task ends.
struct Slot<'a>(&'a Shared);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let shared = self.0;
        let was = shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        // Only the first free slot wakes a full claim loop; it claims
        // whatever is free by then. Waking it per job would cost a wake-up
        // and a one-message claim per job.
        if was == shared.config.concurrency {
            shared.slot_freed.notify_one();
        }
        if shared.shutdown.is_cancelled() {
            shared.job_ended.notify_waiters();
        }
    }
}

/// How many free slots make a claim worth it without lingering.
fn claim_batch(concurrency: usize) -> usize {
    (concurrency / 4).max(1)
}

/// Reap lapsed leases, poll the depth and forget idle agents, each on its
/// own interval.
async fn maintain(shared: Arc<Shared>) {
    let every = |period: Duration| {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    };
    let mut reap = every(shared.config.reap_interval.0);
    let mut depth = every(shared.config.depth_interval.0);
    let mut idle = every(shared.config.agent_idle.0);
    loop {
        tokio::select! {
            _ = reap.tick() => match shared.mailbox.reap().await {
                Ok(0) => {}
                Ok(reaped) => tracing::info!(queue = shared.queue(), reaped, "returned lapsed leases to the queue"),
                Err(err) => tracing::warn!(queue = shared.queue(), error = %err, "reap failed"),
            },
            _ = depth.tick() => shared.probe_depth().await,
            _ = idle.tick() => shared.agents.forget_idle(),
        }
    }
}

/// Shortest pause between retries of a failed mailbox call.
const MAILBOX_RETRY: Duration = Duration::from_millis(100);
