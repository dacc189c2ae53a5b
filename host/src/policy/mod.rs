//! Policy files: what each agent may use, and what each tool may reach.
//!
//! A policy is a TOML file (see `docs/policy.md` for a full example). It
//! grants tools and models to agents, and gives every tool its filesystem
//! grants, network allowlist, environment variables and limits. Unknown keys
//! are rejected with their name and line, so a typo never silently widens or
//! narrows what a guest may do.
//!
//! A job may narrow its agent's policy ([`PolicyNarrowing`]), never widen it.

mod grants;
mod narrow;
mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runtime::Limits;

pub use grants::{Access, AllowedUrl, FsGrant, GrantPath, is_private_ip_literal};
pub use narrow::{PolicyNarrowing, ToolNarrowing};
pub use units::{ByteSize, HumanDuration, parse_duration};

/// Errors loading, validating or narrowing a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or an invalid value.
    #[error("policy {origin}:{line}:{column}: {message}")]
    Parse {
        /// The file, or `<inline>`.
        origin: String,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The policy is well-formed but inconsistent.
    #[error("policy {origin}: {message}")]
    Invalid {
        /// The file, or `<inline>`.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// The policy has no section for this agent.
    #[error("the policy has no [agents.{0}] section, so agent {0:?} may not run under it")]
    UnknownAgent(String),
    /// A narrowing asks for more than the policy grants.
    #[error("a job may narrow its policy, never widen it: {0}")]
    Widening(String),
}

/// A whole policy file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Per agent (by component file stem): tools and models granted, budgets.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentPolicy>,
    /// Per tool (by the name in its spec): what one call of the tool may reach.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolPolicy>,
}

/// What one agent may use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPolicy {
    /// Names of the tools the agent may call. Default: none.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Model ids the agent may use. Absent: any model the host serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Default budgets of the agent's jobs.
    #[serde(default)]
    pub budget: Budget,
}

/// Default budgets of a job; an unset dimension is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Most input tokens over all model calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
    /// Most output tokens over all model calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// Most input plus output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_tokens: Option<u64>,
    /// Most spend, in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_usd: Option<f64>,
    /// Most model calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    /// Wall-clock limit of the whole job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
}

/// What one call of a tool may reach.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolPolicy {
    /// Workspace paths the tool sees. Default: none, the tool sees no files.
    #[serde(default)]
    pub fs: Vec<FsGrant>,
    /// Host environment variables passed through, by name. Default: none.
    #[serde(default)]
    pub env: Vec<String>,
    /// Destinations the tool may send HTTP requests to. Default: none.
    #[serde(default)]
    pub network: Vec<NetworkRule>,
    /// Limits of one call; unset ones take the host's defaults.
    #[serde(default)]
    pub limits: ToolLimits,
}

/// One network allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRule {
    /// `scheme://host[:port]/path-prefix`: requests must match all four.
    pub url: AllowedUrl,
}

/// Limits of one tool call, as written in a policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolLimits {
    /// Fuel (about one unit per wasm instruction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Linear memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// Wall-clock time of one call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Largest output, in bytes of JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<ByteSize>,
}

impl Budget {
    /// This budget with each dimension it leaves unset taken from `defaults`.
    pub fn or(&self, defaults: &Budget) -> Budget {
        Budget {
            max_input_tokens: self.max_input_tokens.or(defaults.max_input_tokens),
            max_output_tokens: self.max_output_tokens.or(defaults.max_output_tokens),
            max_total_tokens: self.max_total_tokens.or(defaults.max_total_tokens),
            max_usd: self.max_usd.or(defaults.max_usd),
            max_turns: self.max_turns.or(defaults.max_turns),
            timeout: self.timeout.or(defaults.timeout),
        }
    }

    /// The model calls' share of this budget as the model layer enforces it
    /// (US dollars in micro-dollars; the timeout is the job's deadline).
    pub fn model_budget(&self) -> crate::model::Budget {
        crate::model::Budget {
            max_input_tokens: self.max_input_tokens,
            max_output_tokens: self.max_output_tokens,
            max_total_tokens: self.max_total_tokens,
            // Negative amounts are refused when parsed; `as` saturates what is left.
            max_micro_usd: self.max_usd.map(|usd| (usd * 1e6).round().max(0.0) as u64),
            max_turns: self.max_turns,
        }
    }
}

impl ToolLimits {
    /// `base` with every limit set here applied.
    pub fn apply(&self, base: Limits) -> Limits {
        Limits {
            fuel: self.fuel.unwrap_or(base.fuel),
            memory_bytes: self.memory.map_or(base.memory_bytes, |m| m.0),
            deadline: self.timeout.map_or(base.deadline, |t| t.0),
            output_bytes: self.output_bytes.map_or(base.output_bytes, |o| o.0),
            ..base
        }
    }

    /// The limits of `limits` this policy can express.
    fn of(limits: &Limits) -> Self {
        Self {
            fuel: Some(limits.fuel),
            memory: Some(ByteSize(limits.memory_bytes)),
            timeout: Some(HumanDuration(limits.deadline)),
            output_bytes: Some(ByteSize(limits.output_bytes)),
        }
    }
}

/// What one agent's jobs run under: its section of a policy with every
/// granted tool's policy resolved (limits filled in with the host defaults).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EffectivePolicy {
    /// The agent.
    pub agent: String,
    /// Model ids allowed; `None`: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Default budgets.
    pub budget: Budget,
    /// Every granted tool, with all its limits explicit.
    pub tools: BTreeMap<String, ToolPolicy>,
}

impl Policy {
    /// Read and validate a policy file.
    pub async fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| PolicyError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse and validate policy text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, PolicyError> {
        let policy: Self = parse_toml(text, origin)?;
        policy.validate().map_err(|message| PolicyError::Invalid {
            origin: origin.to_owned(),
            message,
        })?;
        Ok(policy)
    }

    /// Cross-section checks that serde cannot express.
    fn validate(&self) -> Result<(), String> {
        for (agent, section) in &self.agents {
            if let Some(tool) = section.tools.iter().find(|t| !self.tools.contains_key(*t)) {
                return Err(format!(
                    "agent {agent:?} is granted tool {tool:?}, which has no [tools.{tool}] section"
                ));
            }
        }
        for (tool, section) in &self.tools {
            section
                .validate()
                .map_err(|message| format!("[tools.{tool}]: {message}"))?;
        }
        Ok(())
    }

    /// The policy agent `agent` runs under, with tool limits resolved against `defaults`.
    pub fn for_agent(&self, agent: &str, defaults: &Limits) -> Result<EffectivePolicy, PolicyError> {
        let section = self
            .agents
            .get(agent)
            .ok_or_else(|| PolicyError::UnknownAgent(agent.to_owned()))?;
        let tools = section
            .tools
            .iter()
            .filter_map(|name| self.tools.get(name).map(|tool| (name.clone(), tool.resolved(defaults))))
            .collect();
        Ok(EffectivePolicy {
            agent: agent.to_owned(),
            models: section.models.clone(),
            budget: section.budget,
            tools,
        })
    }
}

impl ToolPolicy {
    fn validate(&self) -> Result<(), String> {
        for (i, grant) in self.fs.iter().enumerate() {
            if self.fs[..i].iter().any(|other| other.path == grant.path) {
                return Err(format!("fs path {:?} is granted twice", grant.path.as_str()));
            }
        }
        if let Some(name) = self.env.iter().find(|n| n.is_empty() || n.contains(['=', '\0'])) {
            return Err(format!("env entry {name:?} is not a variable name"));
        }
        Ok(())
    }

    /// This policy with its limits made explicit from `defaults`.
    fn resolved(&self, defaults: &Limits) -> Self {
        Self {
            limits: ToolLimits::of(&self.limits.apply(*defaults)),
            ..self.clone()
        }
    }

    /// The limits of one call, starting from `base` for what the policy cannot express.
    pub fn limits(&self, base: Limits) -> Limits {
        self.limits.apply(base)
    }
}

impl EffectivePolicy {
    /// The policy of tool `name`, if granted.
    pub fn tool(&self, name: &str) -> Option<&ToolPolicy> {
        self.tools.get(name)
    }

    /// The effective policy as pretty JSON, for `wink-host policy check`.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Deserialize TOML, turning the error into one line with its position.
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, PolicyError> {
    toml::from_str(text).map_err(|err| {
        let (line, column) = crate::config::toml_position(text, &err);
        PolicyError::Parse {
            origin: origin.to_owned(),
            line,
            column,
            message: err.message().replace('\n', " "),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[agents.file-digest]
tools = ["read_file", "write_file"]
models = ["anthropic.claude-3-5-haiku-20241022-v1:0"]
budget = { max_total_tokens = 20000, max_usd = 0.5, timeout = "2m" }

[tools.read_file]
fs = [{ path = ".", access = "read-only" }]

[tools.write_file]
fs = [{ path = "out", access = "read-write" }, { path = ".", access = "read-only" }]
env = ["LANG"]
limits = { fuel = 1_000_000_000, memory = "64MiB", timeout = "10s", output_bytes = 65536 }
"#;

    #[test]
    fn parses_a_full_policy_and_resolves_limits() {
        let policy = Policy::parse(EXAMPLE, "example").expect("policy");
        let effective = policy.for_agent("file-digest", &Limits::default()).expect("agent");
        let write = effective.tool("write_file").expect("write_file");
        assert_eq!(write.fs[0].access, Access::ReadWrite);
        assert_eq!(write.limits(Limits::default()).memory_bytes, 64 << 20);
        assert_eq!(
            effective.tool("read_file").expect("read_file").limits.fuel,
            Some(Limits::default().fuel)
        );
        assert_eq!(effective.budget.max_total_tokens, Some(20000));
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let text = "[tools.read_file]\nfs = []\nenvv = [\"HOME\"]\n";
        let err = Policy::parse(text, "p.toml").unwrap_err().to_string();
        assert!(err.starts_with("policy p.toml:3:1:"), "{err}");
        assert!(err.contains("envv"), "{err}");
        let nested = "[tools.t]\nlimits = { fuel = 1, cpu = 2 }\n";
        let err = Policy::parse(nested, "p.toml").unwrap_err().to_string();
        assert!(err.contains("p.toml:2:") && err.contains("cpu"), "{err}");
    }

    #[test]
    fn a_granted_tool_needs_a_section() {
        let err = Policy::parse("[agents.a]\ntools = [\"nope\"]\n", "p")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"nope\"") && err.contains("[tools.nope]"), "{err}");
    }

    #[test]
    fn an_unknown_agent_is_refused_by_name() {
        let err = Policy::default().for_agent("ghost", &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("[agents.ghost]"), "{err}");
    }

    #[test]
    fn duplicate_grants_and_bad_env_names_are_refused() {
        let dup =
            "[tools.t]\nfs = [{ path = \"a\", access = \"read-only\" }, { path = \"./a\", access = \"read-write\" }]\n";
        let err = Policy::parse(dup, "p").unwrap_err().to_string();
        assert!(err.contains("granted twice"), "{err}");
        let env = "[tools.t]\nenv = [\"A=B\"]\n";
        assert!(Policy::parse(env, "p").unwrap_err().to_string().contains("\"A=B\""));
    }
}
