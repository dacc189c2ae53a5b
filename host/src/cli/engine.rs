//! Flags shared by the commands that run jobs, `run` and `worker`: the host
//! configuration file, the model provider and its Bedrock settings, the model
//! allowlist and budget, tool components, the policy file and the compile
//! cache (`enqueue` shares [`BudgetArgs`]).
//!
//! Both commands flatten [`EngineArgs`] and call [`EngineArgs::resolve`], so
//! every setting is read one way: a flag beats its environment variable,
//! which beats the configuration file, which beats the built-in default
//! (docs/config.md).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use clap::builder::BoolishValueParser;

use super::ConfigArgs;
use crate::config::{BedrockSection, BreakerSection, GuardrailSection, HostConfig, RetrySection};
use crate::model::bedrock::BedrockProvider;
use crate::model::{ModelPolicy, ModelProvider, ModelSpec, Price, PriceTable, Script, ScriptedProvider};
use crate::policy::{self, HumanDuration, Policy, PolicyNarrowing};
use crate::runtime::{Limits, Runtime};
use crate::tools::ToolComponent;

/// What `run` and `worker` read to set up jobs.
#[derive(Debug, Clone, Default, Args)]
pub struct EngineArgs {
    /// Model provider: `echo` (answers with the last user text), `scripted:FILE` or
    /// `bedrock:MODEL_ID` [default: the config's `[model] default`, else echo].
    #[arg(long, short, env = "WINK_MODEL", value_name = "SPEC")]
    pub model: Option<ModelSpec>,

    /// The host configuration file.
    #[command(flatten)]
    pub config: ConfigArgs,

    /// Bedrock settings (used with a `bedrock:MODEL_ID` model).
    #[command(flatten)]
    pub bedrock: BedrockArgs,

    /// Model allowlist and budget.
    #[command(flatten)]
    pub model_policy: ModelPolicyArgs,

    /// A tool component (.wasm) to offer; with `--policy`, an agent gets only
    /// the tools its policy grants. Repeat for several.
    #[arg(long = "tool", short = 't', value_name = "FILE")]
    pub tools: Vec<PathBuf>,

    /// Policy file (TOML, docs/policy.md): an agent without a section in it
    /// is refused, and each gets only its grants [default: none, every tool
    /// and model allowed].
    #[arg(long, env = "WINK_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Keep precompiled components here so later runs skip compilation
    /// [default: $XDG_CACHE_HOME/wink-host, else ~/.cache/wink-host].
    #[arg(long, env = "WINK_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Compile components in memory only; read and write no cache directory.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
}

/// The settings of [`EngineArgs`], read and checked.
pub struct Engine {
    /// The configuration file's contents (defaults without one).
    pub config: HostConfig,
    /// The provider serving model calls.
    pub model: Arc<dyn ModelProvider>,
    /// Built-in prices, the config's `[prices]` and `--prices` over them.
    pub prices: Arc<PriceTable>,
    /// The policy file, parsed.
    pub policy: Option<Policy>,
}

impl EngineArgs {
    /// Read the configuration file, the policy and the price files and
    /// build the model provider; everything is checked before any component
    /// is compiled, so a bad setting fails fast with its name.
    pub async fn resolve(&self) -> anyhow::Result<Engine> {
        let config = self.config.load().await?;
        let spec = self
            .model
            .clone()
            .or_else(|| config.model.default.clone())
            .unwrap_or_default();
        let bedrock = config.bedrock.clone().overridden_by(self.bedrock.section());
        // Checked whatever the model: a bad Bedrock setting fails now, not
        // first when a later run or a config change switches to Bedrock.
        bedrock.options(None)?;
        let model = model_provider(&spec, &bedrock).await?;
        let prices = Arc::new(self.model_policy.prices(&config).await?);
        let policy = match &self.policy {
            Some(path) => Some(Policy::load(path).await?),
            None => None,
        };
        Ok(Engine {
            config,
            model,
            prices,
            policy,
        })
    }

    /// Where compiled components are cached; none with `--no-cache`.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        self.cache_dir.clone().or_else(default_cache_dir)
    }

    /// Load every `--tool`, with the default limits (a policy narrows them per tool).
    pub async fn load_tools(&self, runtime: &Runtime) -> anyhow::Result<Vec<ToolComponent>> {
        let mut tools = Vec::with_capacity(self.tools.len());
        for path in &self.tools {
            tools.push(runtime.load_tool(path, Limits::default()).await?);
        }
        Ok(tools)
    }
}

impl Engine {
    /// The model policy of a job allowed `models` within `budget`, with the
    /// configuration's `[budget]` filling the dimensions `budget` leaves unset.
    pub fn model_policy(&self, models: Option<Vec<String>>, budget: &policy::Budget) -> ModelPolicy {
        ModelPolicy {
            allowed_models: models,
            budget: budget.or(&self.config.budget).model_budget(),
            prices: self.prices.clone(),
            ..ModelPolicy::default()
        }
    }
}

/// Which models an agent may call and how much it may spend (docs/models.md).
/// With `--policy`, each may only narrow what the policy grants.
#[derive(Debug, Clone, Default, Args)]
pub struct ModelPolicyArgs {
    /// Allow this model id; repeat for several [default: the policy's models, else any].
    #[arg(long = "allow-model", value_name = "MODEL_ID")]
    pub allow_models: Vec<String>,

    /// Budget limits.
    #[command(flatten)]
    pub budget: BudgetArgs,

    /// JSON price overrides `{"MODEL_PREFIX": {"input_usd_per_mtok": N, "output_usd_per_mtok": N}}`,
    /// applied over the config's `[prices]`.
    #[arg(long, env = "WINK_MODEL_PRICES", value_name = "FILE")]
    pub prices: Option<PathBuf>,
}

impl ModelPolicyArgs {
    /// `--allow-model`, if given.
    pub fn models(&self) -> Option<Vec<String>> {
        (!self.allow_models.is_empty()).then(|| self.allow_models.clone())
    }

    /// The flags (and a `--timeout`) as a narrowing of an agent's policy.
    pub fn narrowing(&self, timeout: Option<Duration>) -> PolicyNarrowing {
        PolicyNarrowing {
            tools: None,
            models: self.models(),
            budget: self.budget.budget(timeout),
        }
    }

    /// The built-in prices, the config's `[prices]` over them, then `--prices`.
    pub async fn prices(&self, config: &HostConfig) -> anyhow::Result<PriceTable> {
        let mut table = PriceTable::default();
        table.extend(config.prices.clone());
        if let Some(path) = &self.prices {
            let text = tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("cannot read price file {}", path.display()))?;
            let overrides: BTreeMap<String, Price> = serde_json::from_str(&text)
                .map_err(|err| anyhow::anyhow!("invalid price file {}: {err}", path.display()))?;
            table.extend(overrides);
        }
        Ok(table)
    }
}

/// A job's model budget from flags; an unset dimension is left to the
/// policy, then the configuration, else unlimited.
#[derive(Debug, Clone, Default, Args)]
pub struct BudgetArgs {
    /// Most prompt tokens across the job's model calls.
    #[arg(long, value_name = "N")]
    pub max_input_tokens: Option<u64>,

    /// Most generated tokens across the job's model calls.
    #[arg(long, value_name = "N")]
    pub max_output_tokens: Option<u64>,

    /// Most prompt plus generated tokens.
    #[arg(long, value_name = "N")]
    pub max_total_tokens: Option<u64>,

    /// Most spend in US dollars, priced per model (e.g. 0.25).
    #[arg(long, value_name = "USD", value_parser = parse_usd, allow_negative_numbers = true)]
    pub max_usd: Option<f64>,

    /// Most model calls.
    #[arg(long, value_name = "N")]
    pub max_turns: Option<u32>,
}

impl BudgetArgs {
    /// The budget these flags describe, with the job's wall-clock `timeout`.
    pub fn budget(&self, timeout: Option<Duration>) -> policy::Budget {
        policy::Budget {
            max_input_tokens: self.max_input_tokens,
            max_output_tokens: self.max_output_tokens,
            max_total_tokens: self.max_total_tokens,
            max_usd: self.max_usd,
            max_turns: self.max_turns,
            timeout: timeout.map(HumanDuration),
        }
    }
}

/// `--max-usd`: a non-negative, finite amount.
fn parse_usd(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(usd) if usd.is_finite() && usd >= 0.0 => Ok(usd),
        _ => Err(format!("`{text}` is not a non-negative amount of US dollars")),
    }
}

/// How to reach and call Bedrock; each flag overrides the config's
/// `[bedrock]` key of the same meaning (docs/models.md). Credentials always
/// come from the AWS default chain.
#[derive(Debug, Clone, Default, Args)]
pub struct BedrockArgs {
    /// AWS region for Bedrock [default: the AWS chain's, e.g. `AWS_REGION`].
    #[arg(long = "bedrock-region", env = "WINK_BEDROCK_REGION", value_name = "REGION")]
    pub region: Option<String>,

    /// Bedrock Runtime endpoint override, e.g. a VPC endpoint [default: the regional endpoint].
    #[arg(long = "bedrock-endpoint", env = "WINK_BEDROCK_ENDPOINT", value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// Call ConverseStream and assemble the response instead of Converse [default: false].
    #[arg(long = "bedrock-stream", env = "WINK_BEDROCK_STREAM", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub stream: Option<bool>,

    /// Attempts per model call, the first included; 1 never retries [default: 6].
    #[arg(long = "bedrock-max-attempts", env = "WINK_BEDROCK_MAX_ATTEMPTS", value_name = "N")]
    pub retry_max_attempts: Option<NonZeroU32>,

    /// Backoff ceiling before the first retry; doubles on each retry [default: 200ms].
    #[arg(long = "bedrock-retry-base-delay", env = "WINK_BEDROCK_RETRY_BASE_DELAY", value_name = "DURATION",
          value_parser = crate::policy::parse_duration)]
    pub retry_base_delay: Option<Duration>,

    /// Largest backoff ceiling [default: 10s].
    #[arg(long = "bedrock-retry-max-delay", env = "WINK_BEDROCK_RETRY_MAX_DELAY", value_name = "DURATION",
          value_parser = crate::policy::parse_duration)]
    pub retry_max_delay: Option<Duration>,

    /// Consecutive failed attempts that open a model's circuit [default: 10].
    #[arg(
        long = "bedrock-breaker-threshold",
        env = "WINK_BEDROCK_BREAKER_THRESHOLD",
        value_name = "N"
    )]
    pub breaker_threshold: Option<NonZeroU32>,

    /// How long an open circuit fails calls before one probe [default: 30s].
    #[arg(long = "bedrock-breaker-cooldown", env = "WINK_BEDROCK_BREAKER_COOLDOWN", value_name = "DURATION",
          value_parser = crate::policy::parse_duration)]
    pub breaker_cooldown: Option<Duration>,

    /// Guardrail id or ARN applied to every call; needs a version [default: none].
    #[arg(long = "bedrock-guardrail-id", env = "WINK_BEDROCK_GUARDRAIL_ID", value_name = "ID")]
    pub guardrail_id: Option<String>,

    /// Guardrail version: DRAFT or a number.
    #[arg(
        long = "bedrock-guardrail-version",
        env = "WINK_BEDROCK_GUARDRAIL_VERSION",
        value_name = "VERSION"
    )]
    pub guardrail_version: Option<String>,

    /// Ask Bedrock for the guardrail trace [default: false].
    #[arg(long = "bedrock-guardrail-trace", env = "WINK_BEDROCK_GUARDRAIL_TRACE", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub guardrail_trace: Option<bool>,
}

impl BedrockArgs {
    /// The flags as a `[bedrock]` section, to lay over the config's.
    pub fn section(&self) -> BedrockSection {
        BedrockSection {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            stream: self.stream,
            retry: RetrySection {
                max_attempts: self.retry_max_attempts,
                base_delay: self.retry_base_delay.map(HumanDuration),
                max_delay: self.retry_max_delay.map(HumanDuration),
            },
            breaker: BreakerSection {
                failure_threshold: self.breaker_threshold,
                cool_down: self.breaker_cooldown.map(HumanDuration),
            },
            guardrail: GuardrailSection {
                identifier: self.guardrail_id.clone(),
                version: self.guardrail_version.clone(),
                trace: self.guardrail_trace,
            },
        }
    }
}

/// `$XDG_CACHE_HOME/wink-host`, else `$HOME/.cache/wink-host`.
fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("wink-host"))
}

/// The provider a model spec names; `bedrock` settings apply to `bedrock:` specs.
pub async fn model_provider(spec: &ModelSpec, bedrock: &BedrockSection) -> anyhow::Result<Arc<dyn ModelProvider>> {
    Ok(match spec {
        ModelSpec::Echo => Arc::new(ScriptedProvider::echo()),
        ModelSpec::Scripted(path) => Arc::new(ScriptedProvider::new(Script::load(path).await?)),
        ModelSpec::Bedrock(model) => {
            Arc::new(BedrockProvider::from_environment(bedrock.options(Some(model.clone()))?).await)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_name_bad_values() {
        assert_eq!(parse_usd("0.25"), Ok(0.25));
        assert!(parse_usd("-1").unwrap_err().contains("`-1`"));
        assert!(parse_usd("NaN").unwrap_err().contains("`NaN`"));
        assert!(parse_usd("inf").unwrap_err().contains("`inf`"));
    }
}
