//! `wink-host run`: one job, in-process.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::job::JobRequest;
use crate::model::bedrock::{BedrockOptions, BedrockProvider};
use crate::model::{Budget, ModelPolicy, ModelProvider, ModelSpec, PriceTable, Script, ScriptedProvider};
use crate::runtime::{JobEnv, Limits, Runtime, RuntimeConfig};
use crate::sandbox::Workspace;
use crate::session::MemorySessionStore;

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

    /// Model provider: `echo` (answers with the last user text), `scripted:FILE` or `bedrock:MODEL_ID`.
    #[arg(long, short, env = "WINK_MODEL", default_value = "echo")]
    pub model: ModelSpec,

    /// Bedrock settings (used with `--model bedrock:MODEL_ID`).
    #[command(flatten)]
    pub bedrock: BedrockArgs,

    /// The job's model allowlist and budget.
    #[command(flatten)]
    pub model_policy: ModelPolicyArgs,

    /// A tool component (.wasm) to grant to the agent; repeat for several.
    #[arg(long = "tool", short = 't')]
    pub tools: Vec<PathBuf>,

    /// Policy file (TOML, see docs/policy.md): the agent must have a section
    /// in it, and every `--tool` must be granted to it, or the run is refused.
    #[arg(long, env = "WINK_POLICY")]
    pub policy: Option<PathBuf>,

    /// Narrow the agent's policy for this job (TOML); needs `--policy`.
    #[arg(long, requires = "policy")]
    pub narrow: Option<PathBuf>,

    /// Request id (idempotency key) of the job.
    #[arg(long, default_value = "local")]
    pub request_id: String,

    /// CPU limit in fuel units (about one per wasm instruction).
    #[arg(long, default_value_t = Limits::default().fuel)]
    pub fuel: u64,

    /// Wall-clock limit for the whole job, e.g. 500ms, 30s, 5m.
    #[arg(long, default_value = "300s", value_parser = crate::policy::parse_duration)]
    pub timeout: Duration,

    /// Linear-memory limit in bytes.
    #[arg(long, default_value_t = Limits::default().memory_bytes)]
    pub memory: usize,

    /// Largest output the agent may return, in bytes.
    #[arg(long, default_value_t = Limits::default().output_bytes)]
    pub max_output: usize,

    /// Keep precompiled components here so later runs skip compilation
    /// [default: $XDG_CACHE_HOME/wink-host, else ~/.cache/wink-host].
    #[arg(long, env = "WINK_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Compile components in memory only; read and write no cache directory.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
}

impl RunArgs {
    /// Run the job and print its output.
    pub async fn execute(self) -> anyhow::Result<()> {
        let input = self.read_input().await?;
        let limits = Limits {
            fuel: self.fuel,
            deadline: self.timeout,
            memory_bytes: self.memory,
            output_bytes: self.max_output,
            ..Limits::default()
        };
        let runtime = Runtime::new(&RuntimeConfig {
            max_concurrent_jobs: 1,
            max_concurrent_tool_calls: 4,
            cache_dir: self.cache_dir(),
            ..RuntimeConfig::default()
        })?;
        let agent = runtime.load_agent(&self.component).await?;
        let mut tools = Vec::with_capacity(self.tools.len());
        for path in &self.tools {
            tools.push(runtime.load_tool(path, Limits::default()).await?);
        }
        let workspace = self.workspace.as_ref().map(Workspace::open).transpose()?;
        let env = JobEnv {
            model: model_provider(&self.model, &self.bedrock).await?,
            tools: Arc::new(
                super::policy::tool_set(
                    &runtime,
                    agent.name(),
                    tools,
                    self.policy.as_deref(),
                    self.narrow.as_deref(),
                )
                .await?,
            ),
            sessions: Arc::new(MemorySessionStore::default()),
            workspace: workspace.map(Arc::new),
            limits,
            model_policy: self.model_policy.policy().await?,
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

    fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        self.cache_dir.clone().or_else(default_cache_dir)
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

/// Which models the agent may call and how much it may spend (docs/models.md).
#[derive(Debug, Clone, Default, Args)]
pub struct ModelPolicyArgs {
    /// Grant this model id to the agent; repeat for several (none given: any model).
    #[arg(long = "allow-model")]
    pub allow_models: Vec<String>,

    /// Most prompt tokens across the job's model calls.
    #[arg(long)]
    pub max_input_tokens: Option<u64>,

    /// Most generated tokens across the job's model calls.
    #[arg(long)]
    pub max_output_tokens: Option<u64>,

    /// Most prompt plus generated tokens.
    #[arg(long)]
    pub max_total_tokens: Option<u64>,

    /// Most spend in US dollars, priced per model (e.g. 0.25).
    #[arg(long)]
    pub max_usd: Option<f64>,

    /// Most model calls.
    #[arg(long)]
    pub max_turns: Option<u32>,

    /// JSON price overrides `{"MODEL_PREFIX": {"input_usd_per_mtok": N, "output_usd_per_mtok": N}}`.
    #[arg(long, env = "WINK_MODEL_PRICES")]
    pub prices: Option<PathBuf>,
}

impl ModelPolicyArgs {
    /// The policy these flags describe.
    pub async fn policy(&self) -> anyhow::Result<ModelPolicy> {
        let prices = match &self.prices {
            Some(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .with_context(|| format!("cannot read price file {}", path.display()))?;
                PriceTable::with_overrides(&text)
                    .map_err(|reason| anyhow::anyhow!("invalid price file {}: {reason}", path.display()))?
            }
            None => PriceTable::default(),
        };
        let max_micro_usd = self
            .max_usd
            .map(|usd| {
                anyhow::ensure!(usd.is_finite() && usd >= 0.0, "--max-usd must be a non-negative number");
                Ok((usd * 1e6).round() as u64)
            })
            .transpose()?;
        Ok(ModelPolicy {
            allowed_models: (!self.allow_models.is_empty()).then(|| self.allow_models.clone()),
            budget: Budget {
                max_input_tokens: self.max_input_tokens,
                max_output_tokens: self.max_output_tokens,
                max_total_tokens: self.max_total_tokens,
                max_micro_usd,
                max_turns: self.max_turns,
            },
            prices: Arc::new(prices),
            ..ModelPolicy::default()
        })
    }
}

/// How to reach Bedrock; credentials always come from the AWS default chain.
#[derive(Debug, Clone, Default, Args)]
pub struct BedrockArgs {
    /// AWS region for Bedrock (default: the AWS chain's, e.g. `AWS_REGION`).
    #[arg(long = "bedrock-region", env = "WINK_BEDROCK_REGION")]
    pub region: Option<String>,

    /// Bedrock Runtime endpoint override, e.g. a VPC endpoint.
    #[arg(long = "bedrock-endpoint", env = "WINK_BEDROCK_ENDPOINT")]
    pub endpoint_url: Option<String>,

    /// Call ConverseStream and assemble the response instead of Converse.
    #[arg(long = "bedrock-stream", env = "WINK_BEDROCK_STREAM")]
    pub stream: bool,
}

/// `$XDG_CACHE_HOME/wink-host`, else `$HOME/.cache/wink-host`.
pub(super) fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("wink-host"))
}

/// The provider a model spec names.
pub async fn model_provider(spec: &ModelSpec, bedrock: &BedrockArgs) -> anyhow::Result<Arc<dyn ModelProvider>> {
    Ok(match spec {
        ModelSpec::Echo => Arc::new(ScriptedProvider::echo()),
        ModelSpec::Scripted(path) => Arc::new(ScriptedProvider::new(Script::load(path).await?)),
        ModelSpec::Bedrock(model) => Arc::new(
            BedrockProvider::from_environment(BedrockOptions {
                default_model: Some(model.clone()),
                region: bedrock.region.clone(),
                endpoint_url: bedrock.endpoint_url.clone(),
                stream: bedrock.stream,
                ..BedrockOptions::default()
            })
            .await,
        ),
    })
}
