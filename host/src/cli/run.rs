//! `wink-host run`: one job, in-process.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::engine::{Engine, EngineArgs};
use crate::job::JobRequest;
use crate::policy::{self, EffectivePolicy};
use crate::runtime::{JobEnv, Limits, Runtime, RuntimeConfig};
use crate::sandbox::Workspace;
use crate::session::MemorySessionStore;

/// The job's wall-clock limit when no flag, policy or configuration sets one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Arguments of `wink-host run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The agent component (.wasm) to run.
    pub component: PathBuf,

    /// The job input: JSON text, or @FILE to read it from a file.
    #[arg(long, short, default_value = "{}")]
    pub input: String,

    /// Directory preopened read-only at /workspace inside the agent (none: no files).
    #[arg(long, short)]
    pub workspace: Option<PathBuf>,

    /// Model, Bedrock, budget, tool, policy, configuration and cache settings.
    #[command(flatten)]
    pub engine: EngineArgs,

    /// Narrow the agent's policy for this job (TOML); needs `--policy`.
    #[arg(long, requires = "policy")]
    pub narrow: Option<PathBuf>,

    /// Request id (idempotency key) of the job.
    #[arg(long, default_value = "local")]
    pub request_id: String,

    /// CPU limit in fuel units (about one per wasm instruction).
    #[arg(long, default_value_t = Limits::default().fuel)]
    pub fuel: u64,

    /// Wall-clock limit for the whole job, e.g. 500ms, 30s, 5m; at most the policy's
    /// budget timeout [default: the policy's, else the config's `[budget] timeout`, else 300s].
    #[arg(long, value_parser = crate::policy::parse_duration)]
    pub timeout: Option<Duration>,

    /// Linear-memory limit in bytes.
    #[arg(long, default_value_t = Limits::default().memory_bytes)]
    pub memory: usize,

    /// Largest output the agent may return, in bytes.
    #[arg(long, default_value_t = Limits::default().output_bytes)]
    pub max_output: usize,
}

impl RunArgs {
    /// Run the job and print its output.
    pub async fn execute(self) -> anyhow::Result<()> {
        let input = self.read_input().await?;
        // Settings are checked before any component is compiled.
        let engine = self.engine.resolve().await?;
        let runtime = Runtime::new(&RuntimeConfig {
            max_concurrent_jobs: 1,
            max_concurrent_tool_calls: 4,
            cache_dir: self.engine.cache_dir(),
            ..RuntimeConfig::default()
        })?;
        let agent = runtime.load_agent(&self.component).await?;
        let grant = self.grant(&engine, agent.name()).await?;
        let limits = Limits {
            fuel: self.fuel,
            deadline: grant
                .budget
                .timeout
                .or(engine.config.budget.timeout)
                .map_or(DEFAULT_TIMEOUT, |t| t.0),
            memory_bytes: self.memory,
            output_bytes: self.max_output,
            ..Limits::default()
        };
        let tools = self.engine.load_tools(&runtime).await?;
        let workspace = self.workspace.as_ref().map(Workspace::open).transpose()?;
        let env = JobEnv {
            model: engine.model.clone(),
            tools: Arc::new(super::policy::tool_set(&runtime, tools, grant.policy.as_ref())?),
            sessions: Arc::new(MemorySessionStore::default()),
            workspace: workspace.map(Arc::new),
            limits,
            model_policy: engine.model_policy(grant.models, &grant.budget),
        };
        let report = runtime
            .run_agent(&agent, JobRequest::new(self.request_id, input), env)
            .await;
        for (stream, captured) in [("stdout", &report.stats.stdout), ("stderr", &report.stats.stderr)] {
            if !captured.bytes.is_empty() {
                tracing::info!(stream, dropped_bytes = captured.dropped, text = %String::from_utf8_lossy(&captured.bytes), "guest output");
            }
        }
        let output = report.outcome?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{output}").context("cannot write the output")?;
        Ok(())
    }

    /// What the job may use: the agent's policy narrowed by `--narrow`, then
    /// by the flags, which may narrow but never widen it; without a policy,
    /// what the flags say.
    async fn grant(&self, engine: &Engine, agent: &str) -> anyhow::Result<Grant> {
        let flags = self.engine.model_policy.narrowing(self.timeout);
        let Some(policy) = &engine.policy else {
            return Ok(Grant {
                policy: None,
                models: flags.models,
                budget: flags.budget,
            });
        };
        let effective = super::policy::effective(policy, agent, self.narrow.as_deref())
            .await?
            .narrow(&flags)
            .context("--allow-model, --max-* or --timeout asks for more than the policy grants")?;
        Ok(Grant {
            models: effective.models.clone(),
            budget: effective.budget,
            policy: Some(effective),
        })
    }

    async fn read_input(&self) -> anyhow::Result<String> {
        let input = match self.input.strip_prefix('@') {
            Some(path) => tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("cannot read input file {path}"))?,
            None => self.input.clone(),
        };
        serde_json::from_str::<serde::de::IgnoredAny>(&input).context("--input is not valid JSON")?;
        Ok(input)
    }
}

/// What a job may use, before the configuration's defaults fill in what is unset.
#[derive(Debug)]
struct Grant {
    /// The effective policy; none without `--policy`.
    policy: Option<EffectivePolicy>,
    /// Model ids allowed; none: any.
    models: Option<Vec<String>>,
    /// Budget ceilings; an unset dimension is left to the configuration.
    budget: policy::Budget,
}
