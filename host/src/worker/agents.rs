//! Agent components by reference, loaded once and reused by every job, each
//! with what its policy grants it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::JobResources;
use super::process::Poison;
use crate::mailbox::Envelope;
use crate::model::ModelPolicy;
use crate::policy::{Budget, EffectivePolicy, PolicyNarrowing};
use crate::runtime::{AgentComponent, JobEnv, Limits, LoadError, Runtime};
use crate::tools::ToolSet;

/// Loaded agents, keyed by the envelope's `agent` text.
pub(crate) struct Agents {
    runtime: Runtime,
    resources: Arc<JobResources>,
    recheck: Duration,
    epoch: Instant,
    entries: Mutex<HashMap<String, Arc<CachedAgent>>>,
    /// Loads one component at a time, so that many jobs arriving for a cold
    /// agent read and compile it once.
    loading: tokio::sync::Mutex<()>,
}

/// A loaded agent and what its jobs may use.
pub(crate) struct CachedAgent {
    pub(crate) component: AgentComponent,
    /// The policy refusal, if the agent may not run at all.
    setup: Result<AgentSetup, Poison>,
    path: PathBuf,
    stamp: FileStamp,
    /// Milliseconds after [`Agents::epoch`] of the last check of the file.
    checked_ms: AtomicU64,
}

/// What identifies a file's contents without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

async fn stamp(path: &Path) -> Result<FileStamp, LoadError> {
    let metadata = tokio::fs::metadata(path).await.map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(FileStamp {
        len: metadata.len(),
        modified: metadata.modified().ok(),
        inode: metadata.ino(),
    })
}

impl Agents {
    pub(crate) fn new(runtime: Runtime, resources: Arc<JobResources>, recheck: Duration) -> Self {
        Self {
            runtime,
            resources,
            recheck,
            epoch: Instant::now(),
            entries: Mutex::new(HashMap::new()),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn cached(&self, reference: &str) -> Option<Arc<CachedAgent>> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(reference)
            .cloned()
    }

    fn is_fresh(&self, agent: &CachedAgent, now_ms: u64) -> bool {
        let recheck_ms = u64::try_from(self.recheck.as_millis()).unwrap_or(u64::MAX);
        now_ms.saturating_sub(agent.checked_ms.load(Ordering::Relaxed)) < recheck_ms
    }

    /// The agent at `path` (named `reference` in the envelope). A warm agent
    /// costs a map lookup; its file is checked for changes at most once per
    /// recheck interval, and reloaded when it changed.
    pub(crate) async fn get(&self, reference: &str, path: &Path) -> Result<Arc<CachedAgent>, Poison> {
        if let Some(agent) = self.cached(reference) {
            let now = self.now_ms();
            if self.is_fresh(&agent, now) {
                return Ok(agent);
            }
            if stamp(&agent.path).await.is_ok_and(|s| s == agent.stamp) {
                agent.checked_ms.store(now, Ordering::Relaxed);
                return Ok(agent);
            }
        }
        self.load(reference, path).await
    }

    async fn load(&self, reference: &str, path: &Path) -> Result<Arc<CachedAgent>, Poison> {
        let _one_at_a_time = self.loading.lock().await;
        if let Some(agent) = self.cached(reference)
            && self.is_fresh(&agent, self.now_ms())
        {
            return Ok(agent);
        }
        let result = self.read(path).await;
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match &result {
            Ok(agent) => entries.insert(reference.to_owned(), agent.clone()),
            Err(_) => entries.remove(reference),
        };
        result
    }

    async fn read(&self, path: &Path) -> Result<Arc<CachedAgent>, Poison> {
        let stamp = stamp(path).await?;
        let component = self.runtime.load_agent(path).await?;
        tracing::info!(agent = component.name(), path = %path.display(), digest = %component.digest(), "agent loaded");
        let setup = AgentSetup::new(&self.runtime, &self.resources, component.name());
        if let Err(refusal) = &setup {
            tracing::warn!(agent = component.name(), reason = %refusal.message, "agent refused by policy");
        }
        Ok(Arc::new(CachedAgent {
            component,
            setup,
            path: path.to_path_buf(),
            stamp,
            checked_ms: AtomicU64::new(self.now_ms()),
        }))
    }
}

impl CachedAgent {
    /// The environment of one job of this agent under `envelope`'s
    /// narrowing, with `limits` lowered to the granted budget's timeout.
    pub(crate) fn job_env(
        &self,
        runtime: &Runtime,
        resources: &JobResources,
        envelope: &Envelope,
        limits: Limits,
    ) -> Result<JobEnv, Poison> {
        let setup = self.setup.as_ref().map_err(Clone::clone)?;
        let narrowed = setup.narrowed(runtime, resources, envelope)?;
        let (granted, tools) = match &narrowed {
            Some((policy, tools)) => (policy, tools.clone()),
            None => (&setup.granted, setup.tools.clone()),
        };
        // The configuration's defaults fill only what every grant left unset.
        let budget = granted.budget.or(&resources.budget_defaults);
        let model_policy = ModelPolicy {
            allowed_models: granted.models.clone(),
            budget: budget.model_budget(),
            ..setup.model_policy.clone()
        };
        let deadline = budget
            .timeout
            .map_or(limits.deadline, |timeout| timeout.0.min(limits.deadline));
        Ok(JobEnv {
            model: resources.model.clone(),
            tools,
            sessions: resources.sessions.clone(),
            workspace: None,
            limits: Limits { deadline, ..limits },
            model_policy,
        })
    }
}

/// What one agent's jobs may use before any job narrows it.
struct AgentSetup {
    /// The agent's policy section (or the host-wide grants without a policy
    /// file), capped by the host-wide model allowlist and budget.
    granted: EffectivePolicy,
    tools: Arc<ToolSet>,
    /// The host-wide model policy: prices and ledger; each job's allowlist
    /// and budget replace its caps.
    model_policy: ModelPolicy,
}

impl AgentSetup {
    fn new(runtime: &Runtime, resources: &JobResources, agent: &str) -> Result<Self, Poison> {
        let caps = &resources.model_policy;
        let granted = match &resources.policy {
            Some(policy) => {
                let mut effective = policy.for_agent(agent, &Limits::default())?;
                effective.models = intersect(effective.models.take(), caps.allowed_models.as_deref());
                effective.budget = tighter(&effective.budget, &policy_budget(&caps.budget));
                effective
            }
            None => EffectivePolicy {
                agent: agent.to_owned(),
                models: caps.allowed_models.clone(),
                budget: policy_budget(&caps.budget),
                tools: resources
                    .tools
                    .iter()
                    .map(|tool| (tool.spec().name.clone(), tool.policy().clone()))
                    .collect(),
            },
        };
        let tools = Arc::new(tool_set(runtime, resources, &granted)?);
        Ok(Self {
            model_policy: caps.clone(),
            granted,
            tools,
        })
    }

    /// The granted policy narrowed by the envelope, and the tool set that
    /// goes with it; none when the envelope narrows nothing.
    fn narrowed(
        &self,
        runtime: &Runtime,
        resources: &JobResources,
        envelope: &Envelope,
    ) -> Result<Option<(EffectivePolicy, Arc<ToolSet>)>, Poison> {
        let budget_narrowed = envelope.budget != Budget::default();
        if envelope.policy.is_none() && !budget_narrowed {
            return Ok(None);
        }
        let mut policy = match &envelope.policy {
            Some(narrowing) => self.granted.narrow(narrowing)?,
            None => self.granted.clone(),
        };
        if budget_narrowed {
            policy = policy.narrow(&PolicyNarrowing {
                budget: envelope.budget,
                ..PolicyNarrowing::default()
            })?;
        }
        let tools_narrowed = envelope.policy.as_ref().is_some_and(|n| n.tools.is_some());
        let tools = if tools_narrowed {
            Arc::new(tool_set(runtime, resources, &policy)?)
        } else {
            self.tools.clone()
        };
        Ok(Some((policy, tools)))
    }
}

/// The loaded tools `policy` grants, each restricted to its grants. Tools the
/// policy grants but the worker was not given are simply absent.
fn tool_set(runtime: &Runtime, resources: &JobResources, policy: &EffectivePolicy) -> Result<ToolSet, Poison> {
    let granted = resources
        .tools
        .iter()
        .filter(|tool| policy.tool(&tool.spec().name).is_some())
        .cloned();
    ToolSet::granted(runtime, granted, policy).map_err(|err| Poison::new("policy_refused", err.to_string()))
}

/// Model ids both lists allow (none: unrestricted).
fn intersect(policy: Option<Vec<String>>, caps: Option<&[String]>) -> Option<Vec<String>> {
    match (policy, caps) {
        (Some(policy), Some(caps)) => Some(policy.into_iter().filter(|m| caps.contains(m)).collect()),
        (Some(policy), None) => Some(policy),
        (None, caps) => caps.map(<[String]>::to_vec),
    }
}

/// The smaller of two optional limits (none: unlimited).
fn min_option<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b < a { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// Each dimension's stricter limit.
fn tighter(a: &Budget, b: &Budget) -> Budget {
    Budget {
        max_input_tokens: min_option(a.max_input_tokens, b.max_input_tokens),
        max_output_tokens: min_option(a.max_output_tokens, b.max_output_tokens),
        max_total_tokens: min_option(a.max_total_tokens, b.max_total_tokens),
        max_usd: min_option(a.max_usd, b.max_usd),
        max_turns: min_option(a.max_turns, b.max_turns),
        timeout: min_option(a.timeout, b.timeout),
    }
}

/// A host-side model budget in the policy file's terms.
fn policy_budget(budget: &crate::model::Budget) -> Budget {
    Budget {
        max_input_tokens: budget.max_input_tokens,
        max_output_tokens: budget.max_output_tokens,
        max_total_tokens: budget.max_total_tokens,
        max_usd: budget.max_micro_usd.map(|micro| micro as f64 / 1e6),
        max_turns: budget.max_turns,
        timeout: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::HumanDuration;

    #[test]
    fn budgets_combine_per_dimension_to_the_stricter_limit() {
        let policy = Budget {
            max_turns: Some(5),
            max_usd: Some(0.5),
            timeout: Some(HumanDuration(Duration::from_secs(30))),
            ..Budget::default()
        };
        let caps = Budget {
            max_turns: Some(3),
            max_usd: Some(1.0),
            max_total_tokens: Some(100),
            ..Budget::default()
        };
        let both = tighter(&policy, &caps);
        assert_eq!(both.max_turns, Some(3));
        assert_eq!(both.max_usd, Some(0.5));
        assert_eq!(both.max_total_tokens, Some(100));
        assert_eq!(both.timeout, policy.timeout);
        assert_eq!(both.model_budget().max_micro_usd, Some(500_000));
        assert_eq!(policy_budget(&both.model_budget()).max_usd, Some(0.5));
    }

    #[test]
    fn model_allowlists_intersect() {
        let policy = Some(vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(
            intersect(policy.clone(), Some(&["b".to_owned(), "c".to_owned()])),
            Some(vec!["b".to_owned()])
        );
        assert_eq!(intersect(policy.clone(), None), policy);
        assert_eq!(intersect(None, None), None);
    }
}
