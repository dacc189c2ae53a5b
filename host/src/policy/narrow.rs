//! Job-supplied narrowing of an agent's policy.

use std::collections::BTreeMap;
use std::fmt::Display;

use serde::{Deserialize, Serialize};

use super::{Budget, EffectivePolicy, FsGrant, NetworkRule, PolicyError, ToolLimits, ToolPolicy, parse_toml};

/// What a job asks to narrow. Every field is optional: what is absent keeps
/// the policy's value. Anything wider than the policy is refused.
///
/// ```toml
/// models = ["anthropic.claude-3-5-haiku-20241022-v1:0"]
/// budget = { max_turns = 3 }
/// [tools.read_file]                 # only the tools listed stay granted
/// fs = [{ path = "docs", access = "read-only" }]
/// limits = { timeout = "2s" }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyNarrowing {
    /// The tools kept, each optionally narrowed further; absent: all tools kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<BTreeMap<String, ToolNarrowing>>,
    /// The models kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Stricter budgets.
    #[serde(default)]
    pub budget: Budget,
}

/// Narrowing of one tool's policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolNarrowing {
    /// Replaces the filesystem grants; each must lie within a granted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<Vec<FsGrant>>,
    /// Replaces the environment variables; a subset of the granted ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Replaces the network allowlist; each entry within a granted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Vec<NetworkRule>>,
    /// Stricter limits.
    #[serde(default)]
    pub limits: ToolLimits,
}

impl PolicyNarrowing {
    /// Parse a narrowing from TOML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, PolicyError> {
        parse_toml(text, origin)
    }
}

impl EffectivePolicy {
    /// This policy narrowed by `narrowing`; refuses anything wider.
    pub fn narrow(&self, narrowing: &PolicyNarrowing) -> Result<EffectivePolicy, PolicyError> {
        let tools = match &narrowing.tools {
            None => self.tools.clone(),
            Some(wanted) => wanted
                .iter()
                .map(|(name, narrow)| {
                    let granted = self.tools.get(name).ok_or_else(|| {
                        PolicyError::Widening(format!("tool {name:?} is not granted to agent {:?}", self.agent))
                    })?;
                    narrow_tool(name, granted, narrow).map(|tool| (name.clone(), tool))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(EffectivePolicy {
            agent: self.agent.clone(),
            models: narrow_models(self.models.as_deref(), narrowing.models.as_deref())?,
            budget: narrow_budget(&self.budget, &narrowing.budget)?,
            tools,
        })
    }
}

fn narrow_models(granted: Option<&[String]>, wanted: Option<&[String]>) -> Result<Option<Vec<String>>, PolicyError> {
    let (Some(granted), Some(wanted)) = (granted, wanted) else {
        return Ok(wanted.or(granted).map(<[String]>::to_vec));
    };
    match wanted.iter().find(|m| !granted.contains(m)) {
        Some(model) => Err(PolicyError::Widening(format!("model {model:?} is not allowed"))),
        None => Ok(Some(wanted.to_vec())),
    }
}

fn narrow_tool(name: &str, granted: &ToolPolicy, narrow: &ToolNarrowing) -> Result<ToolPolicy, PolicyError> {
    let widen = |what: String| PolicyError::Widening(format!("tool {name:?}: {what}"));
    if let Some(grant) = narrow
        .fs
        .iter()
        .flatten()
        .find(|g| !granted.fs.iter().any(|p| p.covers(g)))
    {
        return Err(widen(format!(
            "fs path {:?} ({:?}) is not within a granted path",
            grant.path.as_str(),
            grant.access
        )));
    }
    if let Some(var) = narrow.env.iter().flatten().find(|v| !granted.env.contains(v)) {
        return Err(widen(format!("env var {var:?} is not granted")));
    }
    if let Some(rule) = narrow
        .network
        .iter()
        .flatten()
        .find(|r| !granted.network.iter().any(|g| g.url.covers(&r.url)))
    {
        return Err(widen(format!("network url {} is not within the allowlist", rule.url)));
    }
    let limits = &narrow.limits;
    let base = &granted.limits;
    Ok(ToolPolicy {
        fs: narrow.fs.clone().unwrap_or_else(|| granted.fs.clone()),
        env: narrow.env.clone().unwrap_or_else(|| granted.env.clone()),
        network: narrow.network.clone().unwrap_or_else(|| granted.network.clone()),
        limits: ToolLimits {
            fuel: at_most("limit fuel", base.fuel, limits.fuel).map_err(&widen)?,
            memory: at_most("limit memory", base.memory, limits.memory).map_err(&widen)?,
            timeout: at_most("limit timeout", base.timeout, limits.timeout).map_err(&widen)?,
            output_bytes: at_most("limit output_bytes", base.output_bytes, limits.output_bytes).map_err(&widen)?,
        },
    })
}

fn narrow_budget(granted: &Budget, wanted: &Budget) -> Result<Budget, PolicyError> {
    let widen = PolicyError::Widening;
    Ok(Budget {
        max_input_tokens: at_most(
            "budget max_input_tokens",
            granted.max_input_tokens,
            wanted.max_input_tokens,
        )
        .map_err(widen)?,
        max_output_tokens: at_most(
            "budget max_output_tokens",
            granted.max_output_tokens,
            wanted.max_output_tokens,
        )
        .map_err(widen)?,
        max_total_tokens: at_most(
            "budget max_total_tokens",
            granted.max_total_tokens,
            wanted.max_total_tokens,
        )
        .map_err(widen)?,
        max_usd: at_most("budget max_usd", granted.max_usd, wanted.max_usd).map_err(widen)?,
        max_turns: at_most("budget max_turns", granted.max_turns, wanted.max_turns).map_err(widen)?,
        timeout: at_most("budget timeout", granted.timeout, wanted.timeout).map_err(widen)?,
    })
}

/// The stricter of `granted` and `wanted`, or an error if `wanted` is looser
/// (an unset `granted` is unlimited).
fn at_most<T: PartialOrd + Display + Copy>(
    what: &str,
    granted: Option<T>,
    wanted: Option<T>,
) -> Result<Option<T>, String> {
    match (granted, wanted) {
        (Some(granted), Some(wanted)) if wanted > granted => {
            Err(format!("{what} {wanted} is above the policy's {granted}"))
        }
        (granted, wanted) => Ok(wanted.or(granted)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Policy;
    use super::*;
    use crate::runtime::Limits;

    fn effective() -> EffectivePolicy {
        let text = r#"
[agents.a]
tools = ["read_file", "fetch"]
models = ["m1", "m2"]
budget = { max_turns = 5 }
[tools.read_file]
fs = [{ path = "docs", access = "read-write" }]
env = ["LANG"]
limits = { fuel = 1000 }
[tools.fetch]
network = [{ url = "http://127.0.0.1:8080/api/" }]
"#;
        let policy = Policy::parse(text, "p").expect("policy");
        policy.for_agent("a", &Limits::default()).expect("agent")
    }

    fn narrow(text: &str) -> Result<EffectivePolicy, PolicyError> {
        effective().narrow(&PolicyNarrowing::parse(text, "n").expect("narrowing"))
    }

    #[test]
    fn narrowing_keeps_only_what_is_asked() {
        let narrowed = narrow(
            "models = [\"m1\"]\nbudget = { max_turns = 2 }\n[tools.read_file]\nfs = [{ path = \"docs/a\", access = \"read-only\" }]\nenv = []\nlimits = { fuel = 10 }\n",
        )
        .expect("narrowed");
        assert_eq!(narrowed.models, Some(vec!["m1".to_owned()]));
        assert_eq!(narrowed.budget.max_turns, Some(2));
        let tool = narrowed.tool("read_file").expect("kept");
        assert_eq!(tool.limits.fuel, Some(10));
        assert!(tool.env.is_empty());
        assert!(narrowed.tool("fetch").is_none());
        assert_eq!(narrow("").expect("empty"), effective());
    }

    #[test]
    fn widening_is_refused_naming_what() {
        let cases = [
            ("[tools.write_file]\n", "tool \"write_file\" is not granted"),
            ("models = [\"m3\"]\n", "model \"m3\""),
            (
                "budget = { max_turns = 6 }\n",
                "budget max_turns 6 is above the policy's 5",
            ),
            ("[tools.read_file]\nlimits = { fuel = 1001 }\n", "limit fuel 1001"),
            (
                "[tools.read_file]\nfs = [{ path = \".\", access = \"read-only\" }]\n",
                "fs path \".\"",
            ),
            ("[tools.read_file]\nenv = [\"HOME\"]\n", "env var \"HOME\""),
            (
                "[tools.fetch]\nnetwork = [{ url = \"http://127.0.0.1:8080/admin\" }]\n",
                "network url http://127.0.0.1:8080/admin",
            ),
        ];
        for (text, expected) in cases {
            let err = narrow(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(err.contains("never widen"), "{err}");
        }
    }
}
