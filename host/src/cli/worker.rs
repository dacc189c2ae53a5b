//! `wink-host worker`: claim jobs from a mailbox queue and run them until
//! SIGTERM or SIGINT, then drain and exit 0.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::engine::{Engine, EngineArgs};
use crate::config::HostConfig;
use crate::mailbox;
use crate::model::ModelPolicy;
use crate::policy::{HumanDuration, parse_duration};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::session::MemorySessionStore;
use crate::worker::{HealthServer, JobResources, ReplyQueues, ReplyRoutes, Worker, WorkerConfig};

/// Arguments of `wink-host worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Mailbox URL. `memory://` is a queue inside this process (nothing
    /// outside it can enqueue: for tests and embedding).
    #[arg(long, env = "WINK_MAILBOX", default_value = "memory://")]
    pub mailbox: String,

    /// Queue to claim jobs from.
    #[arg(long, env = "WINK_QUEUE", default_value = "wink")]
    pub queue: String,

    /// How the worker claims, runs, retries and releases jobs.
    #[command(flatten)]
    pub options: WorkerOptions,

    /// Model, Bedrock, budget, tool, policy, configuration and cache
    /// settings; `--allow-model` and `--max-*` cap every agent's grants.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Worker options as flags; each one unset keeps the [`WorkerConfig`] value.
#[derive(Debug, Clone, Default, Args)]
pub struct WorkerOptions {
    /// Worker id in logs, spans and replies [default: HOSTNAME-PID].
    #[arg(long, env = "WINK_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Jobs run at once; the async runtime gets no more threads than this
    /// (unless TOKIO_WORKER_THREADS) [default: 16].
    #[arg(long, env = "WINK_CONCURRENCY")]
    pub concurrency: Option<usize>,

    /// Lease of a claim and of each extension, e.g. 60s, 5m [default: 60s].
    #[arg(long, env = "WINK_LEASE", value_parser = human_duration)]
    pub lease: Option<HumanDuration>,

    /// How often a running job extends its lease; at most half the lease [default: 10s].
    #[arg(long, env = "WINK_HEARTBEAT", value_parser = human_duration)]
    pub heartbeat: Option<HumanDuration>,

    /// Deliveries per message before it is dead-lettered [default: 3].
    #[arg(long, env = "WINK_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,

    /// First retry delay, doubled per attempt, with jitter [default: 1s].
    #[arg(long, env = "WINK_BACKOFF_BASE", value_parser = human_duration)]
    pub backoff_base: Option<HumanDuration>,

    /// Longest retry delay [default: 5m].
    #[arg(long, env = "WINK_BACKOFF_MAX", value_parser = human_duration)]
    pub backoff_max: Option<HumanDuration>,

    /// On SIGTERM/SIGINT, how long jobs in flight may finish before they are
    /// given back to the queue [default: 30s].
    #[arg(long, env = "WINK_GRACE_PERIOD", value_parser = human_duration)]
    pub grace_period: Option<HumanDuration>,

    /// Longest wait of one claim for a job to arrive [default: 1s].
    #[arg(long, env = "WINK_POLL_WAIT", value_parser = human_duration)]
    pub poll_wait: Option<HumanDuration>,

    /// How often lapsed leases are returned to the queue [default: 5s].
    #[arg(long, env = "WINK_REAP_INTERVAL", value_parser = human_duration)]
    pub reap_interval: Option<HumanDuration>,

    /// How often the queue depth is read for metrics [default: 5s].
    #[arg(long, env = "WINK_DEPTH_INTERVAL", value_parser = human_duration)]
    pub depth_interval: Option<HumanDuration>,

    /// /health/ready fails when the claim loop or the mailbox has been
    /// silent this long [default: 15s].
    #[arg(long, env = "WINK_READY_THRESHOLD", value_parser = human_duration)]
    pub ready_threshold: Option<HumanDuration>,

    /// Most replies acknowledged in one mailbox call; of them no more with
    /// sampled job spans than OTEL_SPAN_LINK_COUNT_LIMIT while acks are
    /// exported as spans [default: 256].
    #[arg(long, env = "WINK_ACK_BATCH")]
    pub ack_batch: Option<usize>,

    /// How long a batch of acks waits for more finished jobs before it goes;
    /// 0 acks at once; below --heartbeat [default: 1ms].
    #[arg(long, env = "WINK_ACK_LINGER", value_parser = human_duration)]
    pub ack_linger: Option<HumanDuration>,

    /// How long a loaded agent is trusted before its file (or S3 object) is
    /// checked for changes [default: 1s].
    #[arg(long, env = "WINK_AGENT_RECHECK", value_parser = human_duration)]
    pub agent_recheck: Option<HumanDuration>,

    /// How long a loaded agent that no job used is kept in memory; the next
    /// agent load, or a check every this long, forgets it [default: 10m].
    #[arg(long, env = "WINK_AGENT_IDLE", value_parser = human_duration)]
    pub agent_idle: Option<HumanDuration>,

    /// S3-compatible endpoint for s3:// agents, addressed path-style
    /// [default: AWS's].
    #[arg(long, env = "WINK_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// Region of s3:// agents' buckets [default: the AWS default chain's].
    #[arg(long, env = "WINK_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Wall-clock limit of one job, lowered by budgets and deadlines [default: 300s].
    #[arg(long = "timeout", env = "WINK_JOB_TIMEOUT", value_parser = human_duration)]
    pub job_timeout: Option<HumanDuration>,

    /// CPU limit of one job, in fuel [default: 10000000000].
    #[arg(long, env = "WINK_FUEL")]
    pub fuel: Option<u64>,

    /// Linear-memory limit of one job, in bytes [default: 268435456].
    #[arg(long, env = "WINK_MEMORY")]
    pub memory: Option<usize>,

    /// Largest output of one job, in bytes [default: 1048576].
    #[arg(long, env = "WINK_MAX_OUTPUT")]
    pub max_output: Option<usize>,

    /// Queues a job's reply_to may name: comma-separated names, and prefixes
    /// ending in `*` (`replies-*`); '' permits none. A job naming another is
    /// dead-lettered unrun (invalid_envelope) [default: *, any queue].
    #[arg(long, env = "WINK_REPLY_QUEUES", value_name = "QUEUES", value_parser = ReplyQueues::parse)]
    pub reply_queues: Option<ReplyQueues>,

    /// Address of the health server (/health/live, /health/ready, /metrics) [default: 0.0.0.0].
    #[arg(long, env = "WINK_HEALTH_HOST")]
    pub health_host: Option<IpAddr>,

    /// Port of the health server; 0 picks a free one and logs it [default: 9090].
    #[arg(long, env = "WINK_HEALTH_PORT")]
    pub health_port: Option<u16>,
}

fn human_duration(text: &str) -> Result<HumanDuration, String> {
    parse_duration(text).map(HumanDuration)
}

impl WorkerOptions {
    /// The config file's `[worker]` section, with these options over it.
    pub fn resolve(&self, file: &HostConfig) -> WorkerConfig {
        self.apply(file.worker.clone())
    }

    /// `config` with every option given here applied over it.
    pub fn apply(&self, mut config: WorkerConfig) -> WorkerConfig {
        macro_rules! overlay {
            ($($field:ident),*) => {
                $(if let Some(value) = self.$field.clone() {
                    config.$field = value;
                })*
            };
        }
        overlay!(
            concurrency,
            lease,
            heartbeat,
            max_attempts,
            backoff_base,
            backoff_max,
            grace_period,
            poll_wait,
            reap_interval,
            depth_interval,
            ready_threshold,
            ack_batch,
            ack_linger,
            agent_recheck,
            agent_idle,
            job_timeout,
            fuel,
            reply_queues,
            health_host,
            health_port
        );
        macro_rules! overlay_optional {
            ($($field:ident),*) => {
                $(if self.$field.is_some() {
                    config.$field = self.$field.clone();
                })*
            };
        }
        overlay_optional!(worker_id, s3_endpoint, s3_region);
        if let Some(bytes) = self.memory {
            config.memory = crate::policy::ByteSize(bytes);
        }
        if let Some(bytes) = self.max_output {
            config.max_output = crate::policy::ByteSize(bytes);
        }
        config
    }
}

impl WorkerArgs {
    /// How many threads the async runtime should get for this worker
    /// ([`WorkerConfig::async_threads`]). Reads the configuration file
    /// before the runtime exists, and keeps it for [`execute`](Self::execute).
    pub fn async_threads(&mut self) -> anyhow::Result<usize> {
        let file = self.engine.config.preload()?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Ok(self.options.resolve(file).async_threads(cores))
    }

    /// Run the worker until a signal, then drain.
    pub async fn execute(self) -> anyhow::Result<()> {
        let engine = self.engine.resolve().await?;
        let config = self.options.resolve(&engine.config);
        config.validate().map_err(anyhow::Error::msg)?;
        let signals = Signals::install()?;
        let cache_dir = self.engine.cache_dir();
        let concurrency = u32::try_from(config.concurrency).context("--concurrency is too large")?;
        let runtime = Runtime::new(&RuntimeConfig {
            max_concurrent_jobs: concurrency,
            max_concurrent_tool_calls: concurrency.clamp(4, 256),
            cache_dir,
            worker_id: config.worker_id.clone(),
            ..RuntimeConfig::default()
        })?;
        let mailbox = mailbox::open(&self.mailbox, &self.queue)
            .await
            .with_context(|| format!("cannot open queue `{}` of mailbox {}", self.queue, self.mailbox))?;
        if self.mailbox.starts_with("memory:") {
            tracing::warn!("mailbox memory:// lives inside this process: nothing outside it can enqueue jobs");
        }
        let resources = self.resources(&runtime, engine).await?;
        let routes = ReplyRoutes::beside(mailbox.clone(), self.mailbox.clone());
        let worker = Worker::new(runtime.clone(), mailbox, config.clone(), resources, routes)?;
        let addr = SocketAddr::new(config.health_host, config.health_port);
        let health = HealthServer::start(addr, worker.health(), runtime.metrics().clone())
            .await
            .with_context(|| format!("cannot listen on {addr} for the health server"))?;
        tracing::info!(addr = %health.local_addr(), "health server listening");
        tokio::spawn(signals.forward_to(worker.clone()));
        worker.run().await?;
        health.shutdown();
        // main() flushes the trace exporter after this returns.
        Ok(())
    }

    async fn resources(&self, runtime: &Runtime, engine: Engine) -> anyhow::Result<JobResources> {
        let flags = &self.engine.model_policy;
        Ok(JobResources {
            tools: self.engine.load_tools(runtime).await?,
            model_policy: ModelPolicy {
                allowed_models: flags.models(),
                budget: flags.budget.budget(None).model_budget(),
                prices: engine.prices,
                ledger: mailbox::open_usage_ledger(&self.mailbox).await?,
                ..ModelPolicy::default()
            },
            budget_defaults: engine.config.budget,
            model: engine.model,
            policy: engine.policy,
            sessions: Arc::new(MemorySessionStore::default()),
            aws_config: None,
        })
    }
}

/// SIGTERM and SIGINT: the first drains, a second gives jobs back at once.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }

    async fn forward_to(mut self, worker: Worker) {
        let signal = self.next().await;
        tracing::info!(
            signal,
            "shutting down: no new claims; jobs in flight get the grace period"
        );
        worker.shutdown();
        let signal = self.next().await;
        tracing::warn!(signal, "second signal: giving jobs in flight back to the queue now");
        worker.release_all();
    }
}
