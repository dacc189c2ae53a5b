//! `wink-host run`: one job, in-process.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::job::JobRequest;
use crate::model::{ModelProvider, ModelSpec, Script, ScriptedProvider};
use crate::runtime::{JobEnv, Limits, Runtime, RuntimeConfig};
use crate::sandbox::Workspace;
use crate::session::MemorySessionStore;
use crate::tools::ToolSet;

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

    /// Model provider: `echo` (answers with the last user text) or `scripted:FILE`.
    #[arg(long, short, env = "WINK_MODEL", default_value = "echo")]
    pub model: ModelSpec,

    /// A tool component (.wasm) to grant to the agent; repeat for several.
    #[arg(long = "tool", short = 't')]
    pub tools: Vec<PathBuf>,

    /// Request id (idempotency key) of the job.
    #[arg(long, default_value = "local")]
    pub request_id: String,

    /// CPU limit in fuel units (about one per wasm instruction).
    #[arg(long, default_value_t = Limits::default().fuel)]
    pub fuel: u64,

    /// Wall-clock limit for the whole job, e.g. 500ms, 30s, 5m.
    #[arg(long, default_value = "300s", value_parser = super::parse_duration)]
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
            model: model_provider(&self.model).await?,
            tools: Arc::new(ToolSet::new(tools)?),
            sessions: Arc::new(MemorySessionStore::default()),
            workspace: workspace.map(Arc::new),
            limits,
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

/// `$XDG_CACHE_HOME/wink-host`, else `$HOME/.cache/wink-host`.
fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("wink-host"))
}

/// The provider a model spec names.
pub async fn model_provider(spec: &ModelSpec) -> anyhow::Result<Arc<dyn ModelProvider>> {
    Ok(match spec {
        ModelSpec::Echo => Arc::new(ScriptedProvider::echo()),
        ModelSpec::Scripted(path) => Arc::new(ScriptedProvider::new(Script::load(path).await?)),
    })
}
