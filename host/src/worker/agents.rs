//! Agent components by reference, loaded once and reused by every job, each
//! with what its policy grants it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::JobResources;
use super::process::Poison;
use super::s3::{FetchError, S3Agents, S3Settings};
use crate::mailbox::{AgentRef, Envelope};
use crate::model::ModelPolicy;
use crate::policy::{Budget, EffectivePolicy, PolicyNarrowing};
use crate::runtime::{AgentComponent, JobEnv, Limits, LoadError, Runtime, agent_name};
use crate::tools::ToolSet;

/// The name the agent at `source` goes by once loaded (its component's name
/// in logs, spans, metrics and policy sections).
pub(crate) fn source_name(source: &AgentRef) -> String {
    match source {
        AgentRef::File(path) => agent_name(path),
        AgentRef::S3 { key, .. } => agent_name(Path::new(key)),
    }
}

/// Loaded agents, keyed by the envelope's `agent` text.
pub(crate) struct Agents {
    runtime: Runtime,
    resources: Arc<JobResources>,
    s3: S3Agents,
    recheck: Duration,
    /// How long an agent no job used is kept.
    idle: Duration,
    epoch: Instant,
    entries: Mutex<HashMap<String, Arc<CachedAgent>>>,
    /// The load in progress of each reference being loaded: many jobs
    /// arriving for a cold agent read and compile it once, while other
    /// agents load beside it (a slow fetch holds up only its own jobs).
    loading: LoadGates,
}

/// Per reference being loaded, the gate its loads pass one at a time.
type LoadGates = Mutex<HashMap<String, Gate>>;

/// The jobs loading one reference: the lock they take in turn, and how
/// many hold it or wait for it (the gate goes when none does).
#[derive(Default)]
struct Gate {
    lock: Arc<tokio::sync::Mutex<()>>,
    jobs: usize,
}

/// Why a job's agent is not available to it.
#[derive(Debug)]
pub(crate) enum AgentError {
    /// The reference, the component or its policy is bad: dead-letter.
    Poison(Poison),
    /// Its store did not answer: retry later.
    Unavailable(String),
}

impl From<Poison> for AgentError {
    fn from(poison: Poison) -> Self {
        Self::Poison(poison)
    }
}

impl From<LoadError> for AgentError {
    fn from(err: LoadError) -> Self {
        Self::Poison(err.into())
    }
}

impl From<FetchError> for AgentError {
    fn from(err: FetchError) -> Self {
        match err {
            FetchError::Refused(message) => Self::Poison(Poison::new("component_unreadable", message)),
            FetchError::Unavailable(message) => Self::Unavailable(message),
        }
    }
}

/// A loaded agent and what its jobs may use.
pub(crate) struct CachedAgent {
    pub(crate) component: AgentComponent,
    /// The policy refusal, if the agent may not run at all.
    setup: Result<AgentSetup, Poison>,
    version: Version,
    /// Milliseconds after [`Agents::epoch`] of the last check for changes.
    checked_ms: AtomicU64,
    /// Milliseconds after [`Agents::epoch`] of the last job that asked for it.
    used_ms: AtomicU64,
}

/// What identifies the version of an agent that was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Version {
    File(FileStamp),
    S3 { etag: Option<String> },
}

/// What identifies a file's contents without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// Drop agents taken out of the map, with their compiled components, off
/// the async threads (there may be only one): unmapping a component's code
/// takes a while.
fn release(agents: Vec<Arc<CachedAgent>>) {
    if !agents.is_empty() {
        tokio::task::spawn_blocking(move || drop(agents));
    }
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
    pub(crate) fn new(
        runtime: Runtime,
        resources: Arc<JobResources>,
        s3: S3Settings,
        recheck: Duration,
        idle: Duration,
    ) -> Self {
        Self {
            runtime,
            resources,
            s3: S3Agents::new(s3),
            recheck,
            idle,
            epoch: Instant::now(),
            entries: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
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

    /// The agent `source` (named `reference` in the envelope). A warm agent
    /// costs a map lookup; once per recheck interval one job checks its
    /// source for changes (a file's stamp, an object's ETag) while the others
    /// go on with the cached one, and a changed agent is loaded again. A
    /// store that does not answer the check keeps the cached agent serving.
    pub(crate) async fn get(&self, reference: &str, source: &AgentRef) -> Result<Arc<CachedAgent>, AgentError> {
        let Some(agent) = self.cached(reference) else {
            return self.load(reference, source, None).await;
        };
        let now = self.now_ms();
        agent.used_ms.store(now, Ordering::Relaxed);
        let checked = agent.checked_ms.load(Ordering::Relaxed);
        let recheck_ms = u64::try_from(self.recheck.as_millis()).unwrap_or(u64::MAX);
        let due = now.saturating_sub(checked) >= recheck_ms;
        // Claiming the check by moving its time: the jobs that lose the race
        // keep the cached agent instead of checking too.
        if !due
            || agent
                .checked_ms
                .compare_exchange(checked, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(agent);
        }
        match self.current_version(source).await {
            Ok(version) if version == agent.version => Ok(agent),
            Err(FetchError::Unavailable(message)) => {
                tracing::warn!(agent = agent.component.name(), reason = %message, "cannot check the agent for changes; the cached one goes on serving");
                Ok(agent)
            }
            // Changed, or gone: loading it again gives the new agent or the
            // reason it can no longer run.
            Ok(_) | Err(FetchError::Refused(_)) => self.load(reference, source, Some(&agent)).await,
        }
    }

    async fn current_version(&self, source: &AgentRef) -> Result<Version, FetchError> {
        match source {
            AgentRef::File(path) => stamp(path)
                .await
                .map(Version::File)
                .map_err(|err| FetchError::Refused(err.to_string())),
            AgentRef::S3 { bucket, key } => Ok(Version::S3 {
                etag: self.s3.etag(bucket, key).await?,
            }),
        }
    }

    /// Load `source` unless another job loaded it while this one waited;
    /// `stale` is the cached agent found changed, never handed out again.
    async fn load(
        &self,
        reference: &str,
        source: &AgentRef,
        stale: Option<&Arc<CachedAgent>>,
    ) -> Result<Arc<CachedAgent>, AgentError> {
        let gate = self.join_gate(reference);
        let _turn = gate.lock.lock().await;
        if let Some(agent) = self.cached(reference)
            && !stale.is_some_and(|stale| Arc::ptr_eq(stale, &agent))
        {
            return Ok(agent);
        }
        let result = self.read(source).await;
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut forgotten = self.take_idle(&mut entries);
        match &result {
            Ok(agent) => {
                forgotten.extend(entries.insert(reference.to_owned(), agent.clone()));
            }
            // Gone for good: forget it. Unreachable: keep what was loaded.
            Err(AgentError::Poison(_)) => {
                forgotten.extend(entries.remove(reference));
            }
            Err(AgentError::Unavailable(_)) => {}
        }
        drop(entries);
        release(forgotten);
        result
    }

    /// Join the jobs loading `reference`, until this one leaves (done or
    /// cancelled).
    fn join_gate<'a>(&'a self, reference: &'a str) -> LoadGate<'a> {
        let mut gates = self.loading.lock().unwrap_or_else(PoisonError::into_inner);
        let gate = gates.entry(reference.to_owned()).or_default();
        gate.jobs += 1;
        LoadGate {
            gates: &self.loading,
            reference,
            lock: gate.lock.clone(),
        }
    }

    /// Forget the agents no job started for [`Agents::idle`] and none is
    /// running, with their compiled components: the worker calls it every
    /// `agent_idle`, so a worker that stops seeing new agents lets the old
    /// ones go too.
    pub(crate) fn forget_idle(&self) {
        let forgotten = self.take_idle(&mut self.entries.lock().unwrap_or_else(PoisonError::into_inner));
        release(forgotten);
    }

    /// Take out the agents no job started for [`Agents::idle`] and none is
    /// running (a job longer than that keeps its agent).
    fn take_idle(&self, entries: &mut HashMap<String, Arc<CachedAgent>>) -> Vec<Arc<CachedAgent>> {
        let idle_ms = u64::try_from(self.idle.as_millis()).unwrap_or(u64::MAX);
        let now = self.now_ms();
        entries
            .extract_if(|_, agent| {
                // The map's own reference is the only one: no job holds it.
                Arc::strong_count(agent) == 1 && now.saturating_sub(agent.used_ms.load(Ordering::Relaxed)) >= idle_ms
            })
            .map(|(_, agent)| agent)
            .inspect(|agent| tracing::info!(agent = agent.component.name(), "idle agent forgotten"))
            .collect()
    }

    async fn read(&self, source: &AgentRef) -> Result<Arc<CachedAgent>, AgentError> {
        let (component, version) = match source {
            AgentRef::File(path) => {
                let stamp = stamp(path).await?;
                (self.runtime.load_agent(path).await?, Version::File(stamp))
            }
            AgentRef::S3 { bucket, key } => {
                let object = self.s3.fetch(bucket, key).await?;
                let component = self
                    .runtime
                    .load_agent_bytes(&source_name(source), object.bytes)
                    .await?;
                (component, Version::S3 { etag: object.etag })
            }
        };
        tracing::info!(agent = component.name(), digest = %component.digest(), "agent loaded");
        let setup = AgentSetup::new(&self.runtime, &self.resources, component.name());
        if let Err(refusal) = &setup {
            tracing::warn!(agent = component.name(), reason = %refusal.message, "agent refused by policy");
        }
        Ok(Arc::new(CachedAgent {
            component,
            setup,
            version,
            checked_ms: AtomicU64::new(self.now_ms()),
            used_ms: AtomicU64::new(self.now_ms()),
        }))
    }
}

/// One job's place among those loading an agent reference.
struct LoadGate<'a> {
    gates: &'a LoadGates,
    reference: &'a str,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for LoadGate<'_> {
    /// Forget the gate once no job holds it or waits for it, so that
    /// references seen once, many of them bad, do not pile up.
    fn drop(&mut self) {
        let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(gate) = gates.get_mut(self.reference) {
            gate.jobs = gate.jobs.saturating_sub(1);
            if gate.jobs == 0 {
                gates.remove(self.reference);
            }
        }
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

    fn agents() -> Agents {
        let runtime = Runtime::new(&crate::runtime::RuntimeConfig::default()).expect("runtime");
        Agents::new(
            runtime,
            Arc::new(JobResources::default()),
            S3Settings::default(),
            Duration::from_secs(60),
            Duration::from_secs(600),
        )
    }

    fn gates(agents: &Agents) -> usize {
        agents.loading.lock().expect("gates").len()
    }

    #[tokio::test]
    async fn loads_of_one_agent_take_turns_and_its_gate_goes_with_the_last_job() {
        let agents = agents();
        let first = agents.join_gate("a.wasm");
        let turn = first.lock.lock().await;
        drop(agents.join_gate("b.wasm"));
        assert_eq!(gates(&agents), 1, "b.wasm's gate is gone, a.wasm's stays");
        let second = agents.join_gate("a.wasm");
        assert!(
            second.lock.try_lock().is_err(),
            "a second load of a.wasm waits for the first"
        );
        drop(turn);
        drop(first);
        assert_eq!(gates(&agents), 1, "kept for the job still waiting");
        drop(second.lock.lock().await);
        drop(second);
        assert_eq!(gates(&agents), 0);
    }

    #[tokio::test]
    async fn a_load_cancelled_while_waiting_or_once_its_turn_came_leaves_no_gate() {
        let agents = agents();
        for release_first in [false, true] {
            let first = agents.join_gate("a.wasm");
            let turn = first.lock.lock().await;
            let second = agents.join_gate("a.wasm");
            let mut waiting = Box::pin(second.lock.lock());
            assert!(
                tokio::time::timeout(Duration::from_millis(20), &mut waiting)
                    .await
                    .is_err()
            );
            if release_first {
                // The turn passes to the second job, which is then cancelled
                // before it runs again.
                drop(turn);
                drop(first);
                drop(waiting);
                drop(second);
            } else {
                drop(waiting);
                drop(second);
                drop(turn);
                drop(first);
            }
            assert_eq!(gates(&agents), 0, "release_first: {release_first}");
        }
    }

    #[tokio::test]
    async fn a_failed_load_leaves_no_gate_behind() {
        let agents = agents();
        let missing = AgentRef::File("/nonexistent/agent.wasm".into());
        let result = agents.get("/nonexistent/agent.wasm", &missing).await;
        assert!(matches!(result, Err(AgentError::Poison(_))));
        assert_eq!(gates(&agents), 0);
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
