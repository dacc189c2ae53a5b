//! Running one agent job: instantiate, call `run`, account, attribute failures.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;
use tracing::field::Empty;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use super::{GuestFailure, LimitExceeded, Limits, LoadError, LogContext, Runtime, SandboxState, classify};
use crate::bindings::agent::{Agent, AgentPre};
use crate::bindings::{job, model, session, tools, types};
use crate::job::{AgentFailureKind, JobError, JobReport, JobRequest, JobStats};
use crate::model::{CallContext, ModelPolicy, ModelProvider, Usage};
use crate::sandbox::{self, Workspace, WorkspaceAccess};
use crate::session::{Session, SessionStore};
use crate::tools::{ToolCallContext, ToolSet};

/// A compiled agent component, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct AgentComponent {
    name: Arc<str>,
    /// Keeps the compiled component in the cache while this agent is loaded.
    compiled: super::CachedComponent,
    pre: AgentPre<SandboxState<AgentHost>>,
}

impl std::fmt::Debug for AgentComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentComponent")
            .field("name", &self.name)
            .field("digest", self.digest())
            .finish()
    }
}

impl AgentComponent {
    /// The component's display name (its file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sha256 of the component's bytes.
    pub fn digest(&self) -> &super::Digest {
        self.compiled.digest()
    }
}

/// Everything a job may use besides its own component and input.
#[derive(Clone)]
pub struct JobEnv {
    /// Serves the agent's model calls.
    pub model: Arc<dyn ModelProvider>,
    /// The tools granted to the agent.
    pub tools: Arc<ToolSet>,
    /// Where checkpointed sessions live.
    pub sessions: Arc<dyn SessionStore>,
    /// The job's workspace, preopened read-only at `/workspace`.
    pub workspace: Option<Arc<Workspace>>,
    /// The job's limits.
    pub limits: Limits,
    /// Which models the agent may call, and its model budget.
    pub model_policy: ModelPolicy,
}

impl JobEnv {
    /// An environment with `model`, no tools, in-memory sessions, no
    /// workspace, default limits and an unrestricted model policy.
    pub fn new(model: Arc<dyn ModelProvider>) -> Self {
        Self {
            model,
            tools: Arc::new(ToolSet::default()),
            sessions: Arc::new(crate::session::MemorySessionStore::default()),
            workspace: None,
            limits: Limits::default(),
            model_policy: ModelPolicy::default(),
        }
    }
}

/// The agent-specific part of a job's store.
pub(crate) struct AgentHost {
    runtime: Runtime,
    request_id: Arc<str>,
    job_id: Arc<str>,
    env: JobEnv,
    session: Session,
    model_calls: u32,
    tool_calls: u32,
    usage: Usage,
}

pub(super) fn linker(engine: &Engine) -> wasmtime::Result<Linker<SandboxState<AgentHost>>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Agent::add_to_linker::<_, HasSelf<SandboxState<AgentHost>>>(&mut linker, |state| state)?;
    Ok(linker)
}

/// The name an agent stored at `path` goes by (policy sections, logs,
/// metrics): its file stem, `agent` if it has none. A file path or an S3 key.
pub fn agent_name(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "agent".to_owned(), |stem| stem.to_string_lossy().into_owned())
}

impl Runtime {
    /// Load an agent component from a file, compiling it unless cached.
    pub async fn load_agent(&self, path: &Path) -> Result<AgentComponent, LoadError> {
        let bytes = Self::read_component(path).await?;
        self.load_agent_bytes(&agent_name(path), bytes).await
    }

    /// Load an agent component from its bytes.
    pub async fn load_agent_bytes(&self, name: &str, bytes: Arc<[u8]>) -> Result<AgentComponent, LoadError> {
        let (compiled, instance_pre) = self.prepare(name, bytes, self.agent_linker(), "agent").await?;
        let pre = AgentPre::new(instance_pre).map_err(|err| LoadError::wrong_world(name, "agent", &err))?;
        Ok(AgentComponent {
            name: name.into(),
            compiled,
            pre,
        })
    }

    /// Run one job to completion in a span of its own, `invoke_agent
    /// {agent}`, which continues [`JobRequest::traceparent`]. Never panics on
    /// guest behaviour: every failure is reported in [`JobReport::outcome`].
    pub async fn run_agent(&self, agent: &AgentComponent, request: JobRequest, env: JobEnv) -> JobReport {
        let span = tracing::info_span!(
            "job",
            otel.name = %format_args!("invoke_agent {}", agent.name),
            otel.status_code = Empty,
            request_id = %request.request_id,
            job_id = %request.job_id,
            // Signed: OpenTelemetry has no unsigned integers, and the tracing
            // bridge would export a u32 as a string.
            attempt = i64::from(request.attempt),
            worker_id = %self.worker_id(),
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = %agent.name,
            error.type = Empty,
        );
        crate::telemetry::continue_trace(&span, request.traceparent.as_deref());
        let report = self.run_agent_in(agent, request, env, span.clone()).await;
        if let Err(err) = &report.outcome {
            span.record("otel.status_code", "error");
            span.record("error.type", err.kind());
        }
        report
    }

    /// Run one job to completion inside `span`, a span of the caller's that
    /// stands for the job (the mailbox worker's delivery span, for one), so
    /// that a job is one span, not two. The job's model and tool calls
    /// become its children and its log lines carry its fields. The caller
    /// records the job's outcome on it (an OpenTelemetry span keeps every
    /// value recorded for an attribute, so only one of them may), and
    /// [`JobRequest::traceparent`] is not read: the span carries the trace.
    pub async fn run_agent_in(
        &self,
        agent: &AgentComponent,
        request: JobRequest,
        env: JobEnv,
        span: tracing::Span,
    ) -> JobReport {
        self.run_agent_in_span(agent, request, env, span.clone())
            .instrument(span)
            .await
    }

    async fn run_agent_in_span(
        &self,
        agent: &AgentComponent,
        request: JobRequest,
        env: JobEnv,
        span: tracing::Span,
    ) -> JobReport {
        let started = Instant::now();
        let _active = self.metrics().job_started();
        let limits = self.clamp(&env.limits);
        let deadline = started + limits.deadline;
        let mut stats = JobStats::default();
        if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(&request.input) {
            return self.finish(
                &agent.name,
                Err(JobError::InvalidInput(err.to_string())),
                stats,
                started,
            );
        }
        let Ok(_slot) = tokio::time::timeout_at(deadline.into(), self.job_slots().acquire()).await else {
            return self.finish(
                &agent.name,
                Err(LimitExceeded::of(super::Limit::Deadline, &limits).into()),
                stats,
                started,
            );
        };
        let (wasi, stdio) =
            match sandbox::wasi_context(env.workspace.as_deref(), WorkspaceAccess::ReadOnly, limits.stdio_bytes) {
                Ok(ctx) => ctx,
                Err(err) => return self.finish(&agent.name, Err(err.into()), stats, started),
            };
        let session = env.sessions.load(&request.request_id).await;
        let state = SandboxState {
            wasi,
            table: Default::default(),
            limiter: super::StoreLimiter::new(&limits),
            deadline,
            deadline_hit: false,
            log: LogContext::new(span, agent.name.clone()),
            host: AgentHost {
                runtime: self.clone(),
                request_id: request.request_id.as_str().into(),
                job_id: request.job_id.as_str().into(),
                env,
                session,
                model_calls: 0,
                tool_calls: 0,
                usage: Usage::default(),
            },
        };
        let mut store = self.new_store(state, &limits);
        let job = job::Job {
            request_id: request.request_id,
            job_id: request.job_id,
            attempt: request.attempt,
            input: request.input,
        };
        // The epoch callback stops guest code at the deadline; this timeout
        // also covers time the guest spends suspended inside host calls.
        let call = async {
            let agent = agent
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|err| (GuestStep::Instantiate, err))?;
            agent
                .call_run(&mut store, &job)
                .await
                .map_err(|err| (GuestStep::Run, err))
        };
        let result = tokio::time::timeout_at(deadline.into(), call).await;

        stats.fuel_consumed = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        stats.stdout = stdio.stdout.captured();
        stats.stderr = stdio.stderr.captured();
        let state = store.data();
        stats.model_calls = state.host.model_calls;
        stats.tool_calls = state.host.tool_calls;
        stats.usage = state.host.usage;
        let outcome = match result {
            Err(_elapsed) => Err(LimitExceeded::of(super::Limit::Deadline, &limits).into()),
            Ok(Err((step, err))) => Err(guest_error(step, &err, state.limit_hit(), &limits)),
            Ok(Ok(Err(agent_error))) => Err(agent_failure(agent_error)),
            Ok(Ok(Ok(output))) => check_output(output, &limits),
        };
        self.finish(&agent.name, outcome, stats, started)
    }
}

impl Runtime {
    /// Log and count a finished job, and package its report.
    fn finish(
        &self,
        agent: &str,
        outcome: Result<String, JobError>,
        mut stats: JobStats,
        started: Instant,
    ) -> JobReport {
        stats.elapsed = started.elapsed();
        let metrics = self.metrics();
        let outcome_label = outcome.as_ref().map_or_else(JobError::kind, |_| "succeeded");
        metrics.job_finished(agent, outcome_label, stats.elapsed, stats.fuel_consumed);
        if let Err(JobError::LimitExceeded(hit)) = &outcome {
            metrics.limit_hit("agent", hit.limit.as_str());
            tracing::warn!(guest = "agent", limit = hit.limit.as_str(), "sandbox limit hit");
        }
        log_finished(&outcome, &stats);
        JobReport { outcome, stats }
    }
}

fn log_finished(outcome: &Result<String, JobError>, stats: &JobStats) {
    match outcome {
        Ok(output) => tracing::info!(
            elapsed_us = stats.elapsed.as_micros() as u64,
            fuel = stats.fuel_consumed,
            output_bytes = output.len(),
            "job succeeded"
        ),
        Err(err) => tracing::warn!(
            elapsed_us = stats.elapsed.as_micros() as u64,
            fuel = stats.fuel_consumed,
            error.kind = err.kind(),
            error = %err,
            "job failed"
        ),
    }
}

/// Which step of a job a guest failure came from.
#[derive(Clone, Copy)]
enum GuestStep {
    Instantiate,
    Run,
}

fn guest_error(step: GuestStep, err: &wasmtime::Error, recorded: Option<super::Limit>, limits: &Limits) -> JobError {
    match (classify(err, recorded), step) {
        (GuestFailure::Limit(limit), _) => LimitExceeded::of(limit, limits).into(),
        (GuestFailure::Trap(message), GuestStep::Instantiate) => JobError::Instantiate(message),
        (GuestFailure::Trap(message), GuestStep::Run) => JobError::Trap(message),
        (GuestFailure::Host(message), _) => JobError::Host(message),
    }
}

fn agent_failure(error: job::AgentError) -> JobError {
    let (kind, message) = match error {
        job::AgentError::InvalidInput(m) => (AgentFailureKind::InvalidInput, m),
        job::AgentError::Model(m) => (AgentFailureKind::Model, m),
        job::AgentError::BudgetExceeded(m) => (AgentFailureKind::BudgetExceeded, m),
        job::AgentError::Failed(m) => (AgentFailureKind::Failed, m),
    };
    JobError::Agent { kind, message }
}

fn check_output(output: String, limits: &Limits) -> Result<String, JobError> {
    if output.len() > limits.output_bytes {
        return Err(LimitExceeded::of(super::Limit::Output, limits).into());
    }
    serde_json::from_str::<serde::de::IgnoredAny>(&output).map_err(|err| JobError::InvalidOutput(err.to_string()))?;
    Ok(output)
}

impl job::Host for SandboxState<AgentHost> {}

impl model::Host for SandboxState<AgentHost> {
    async fn converse(
        &mut self,
        request: model::ConverseRequest,
    ) -> wasmtime::Result<Result<model::ConverseResponse, model::ModelError>> {
        let host = &mut self.host;
        let context = CallContext {
            request_id: host.request_id.clone(),
            job_id: host.job_id.clone(),
            turn: host.model_calls,
            deadline: self.deadline,
            metrics: Some(host.runtime.metrics().clone()),
        };
        host.model_calls += 1;
        // A child of the job span, so retries, stream deltas and accounting
        // are tagged with the job's ids.
        let response = super::model_call::converse(
            &host.env.model_policy,
            host.env.model.as_ref(),
            request,
            &context,
            host.runtime.metrics(),
            &self.log.span,
        )
        .await;
        if let Ok(response) = &response {
            host.usage += response.usage;
        }
        Ok(response.map_err(Into::into))
    }

    async fn budget(&mut self) -> wasmtime::Result<model::BudgetStatus> {
        let left = self
            .host
            .env
            .model_policy
            .remaining(&self.host.request_id)
            .await
            .map_err(|err| super::HostFault(format!("cannot read the job's budget: {err}")))?;
        let deadline = self.deadline.saturating_duration_since(Instant::now());
        Ok(model::BudgetStatus {
            input_tokens: left.input_tokens,
            output_tokens: left.output_tokens,
            total_tokens: left.total_tokens,
            micro_usd: left.micro_usd,
            turns: left.turns,
            deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

impl tools::Host for SandboxState<AgentHost> {
    async fn granted(&mut self) -> wasmtime::Result<Vec<types::ToolSpec>> {
        Ok(self.host.env.tools.specs())
    }

    async fn call(&mut self, name: String, input: String) -> wasmtime::Result<Result<String, types::ToolError>> {
        self.host.tool_calls += 1;
        let context = ToolCallContext {
            workspace: self.host.env.workspace.clone(),
            deadline: self.deadline,
            span: self.log.span.clone(),
        };
        let tools = self.host.env.tools.clone();
        Ok(tools.call(&self.host.runtime, &name, input, &context).await)
    }
}

impl session::Host for SandboxState<AgentHost> {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.host.session.get(&key).map(<[u8]>::to_vec))
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), session::SessionError>> {
        Ok(self.host.session.set(key, value))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.host.session.delete(&key);
        Ok(())
    }

    async fn keys(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.host.session.keys())
    }

    async fn checkpoint(&mut self) -> wasmtime::Result<Result<(), session::SessionError>> {
        let host = &self.host;
        Ok(host.env.sessions.save(&host.request_id, &host.session).await)
    }
}
