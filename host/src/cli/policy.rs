//! `wink-host policy check`, and applying a policy to `wink-host run`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::policy::{EffectivePolicy, Policy, PolicyNarrowing};
use crate::runtime::{Limits, Runtime};
use crate::tools::{ToolComponent, ToolSet};

/// Arguments of `wink-host policy`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// What to do with the policy.
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// The `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and print the effective policy as JSON: every
    /// agent's, or one agent's (optionally narrowed), with all tool limits
    /// filled in with the host defaults. Exits non-zero with a one-line error
    /// naming the file, line and key when the policy is invalid.
    Check(CheckArgs),
}

/// Arguments of `wink-host policy check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy file (TOML).
    pub file: PathBuf,

    /// Print only this agent's effective policy.
    #[arg(long)]
    pub agent: Option<String>,

    /// Narrow the agent's policy with this file (TOML) before printing; needs `--agent`.
    #[arg(long, requires = "agent")]
    pub narrow: Option<PathBuf>,
}

impl PolicyArgs {
    /// Run the subcommand.
    pub async fn execute(self) -> anyhow::Result<()> {
        match self.command {
            PolicyCommand::Check(args) => args.execute().await,
        }
    }
}

impl CheckArgs {
    async fn execute(self) -> anyhow::Result<()> {
        let policy = Policy::load(&self.file).await?;
        let text = match &self.agent {
            Some(agent) => effective(&policy, agent, self.narrow.as_deref()).await?.to_json(),
            None => {
                let all = policy
                    .agents
                    .keys()
                    .map(|agent| policy.for_agent(agent, &Limits::default()).map(|e| (agent, e)))
                    .collect::<Result<BTreeMap<_, _>, _>>()?;
                serde_json::to_string_pretty(&all).context("cannot print the policy")?
            }
        };
        writeln!(std::io::stdout().lock(), "{text}").context("cannot write the policy")?;
        Ok(())
    }
}

/// The effective policy of `agent`, narrowed by the file `narrow` if given.
pub(super) async fn effective(policy: &Policy, agent: &str, narrow: Option<&Path>) -> anyhow::Result<EffectivePolicy> {
    let effective = policy.for_agent(agent, &Limits::default())?;
    let Some(path) = narrow else {
        return Ok(effective);
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .with_context(|| format!("cannot read narrowing {}", path.display()))?;
    let narrowing = PolicyNarrowing::parse(&text, &path.display().to_string())?;
    Ok(effective.narrow(&narrowing)?)
}

/// The tool set of a `run`: without a policy, every tool as loaded; with
/// one, each tool restricted to its grants, and a tool the agent is not
/// granted refuses the run.
pub(super) fn tool_set(
    runtime: &Runtime,
    tools: Vec<ToolComponent>,
    policy: Option<&EffectivePolicy>,
) -> anyhow::Result<ToolSet> {
    Ok(match policy {
        None => ToolSet::new(tools)?,
        Some(effective) => ToolSet::granted(runtime, tools, effective)?,
    })
}
