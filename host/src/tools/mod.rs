//! Tools: separate components an agent calls through the host.
//!
//! Every call runs in a fresh instance with the tool's own fuel, memory,
//! deadline and output limits, so a tool that loops, traps or floods output
//! becomes a tool error for the agent, never a failure of the agent or host.
//! Tools, unlike agents, may import `wasi:http`; each request is checked
//! against the tool's network allowlist ([`network`]).

mod network;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;
use tracing::field::Empty;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::tool::{Tool, ToolPre};
use crate::bindings::types::{ToolError, ToolSpec};
use crate::policy::{Access, EffectivePolicy, FsGrant, GrantPath, ToolPolicy};
use crate::runtime::{
    CachedComponent, GuestFailure, LimitExceeded, Limits, LoadError, LogContext, Runtime, SandboxState, classify,
    one_line,
};
use crate::sandbox::{self, Preopen, SandboxError, ToolCallFs, Workspace};

pub use network::NetworkDenial;
pub(crate) use network::ToolHost;
use network::{Denials, NetworkGate};

/// A compiled tool component and the spec it reported.
#[derive(Clone)]
pub struct ToolComponent {
    spec: ToolSpec,
    limits: Limits,
    policy: Arc<ToolPolicy>,
    pre: ToolPre<SandboxState<ToolHost>>,
    /// Keeps the compiled component in the cache while this tool is loaded.
    compiled: CachedComponent,
}

impl std::fmt::Debug for ToolComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolComponent")
            .field("name", &self.spec.name)
            .field("digest", self.digest())
            .field("limits", &self.limits)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl ToolComponent {
    /// The tool's spec, as given to the model.
    pub fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    /// The sha256 of the component's bytes.
    pub fn digest(&self) -> &crate::runtime::Digest {
        self.compiled.digest()
    }

    /// The limits each call runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What each call may reach.
    pub fn policy(&self) -> &ToolPolicy {
        &self.policy
    }

    /// This tool restricted to `policy`: its filesystem grants, environment
    /// variables, and limits (those the policy leaves unset keep their value).
    pub fn with_policy(self, runtime: &Runtime, policy: &ToolPolicy) -> Self {
        Self {
            limits: runtime.clamp(&policy.limits(self.limits)),
            policy: Arc::new(policy.clone()),
            ..self
        }
    }
}

/// Without a policy, a tool sees the whole workspace read-only and nothing else.
fn default_tool_policy() -> ToolPolicy {
    ToolPolicy {
        fs: vec![FsGrant {
            path: GrantPath::root(),
            access: Access::ReadOnly,
        }],
        ..ToolPolicy::default()
    }
}

/// Errors assembling a tool set.
#[derive(Debug, thiserror::Error)]
pub enum ToolSetError {
    /// The component could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Calling the component's `spec` failed.
    #[error("tool component {path} failed to report its spec: {message}")]
    Spec {
        /// The component file.
        path: String,
        /// Why.
        message: String,
    },
    /// Two tools report the same name.
    #[error("two tools are named {0:?}")]
    DuplicateName(String),
    /// The policy does not grant a supplied tool to the agent.
    #[error("tool {tool:?} is not granted to agent {agent:?} by the policy")]
    NotGranted {
        /// The tool's name.
        tool: String,
        /// The agent.
        agent: String,
    },
}

/// What a tool call needs from the job that makes it.
#[derive(Debug, Clone)]
pub struct ToolCallContext {
    /// The job's workspace.
    pub workspace: Option<Arc<Workspace>>,
    /// The job's deadline: no tool call outlives it.
    pub deadline: Instant,
    /// The job's span.
    pub span: tracing::Span,
}

/// The tools granted to an agent, by name.
#[derive(Debug, Default)]
pub struct ToolSet {
    tools: BTreeMap<String, ToolComponent>,
}

pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<SandboxState<ToolHost>>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    network::ensure_tls_provider();
    Tool::add_to_linker::<_, HasSelf<SandboxState<ToolHost>>>(&mut linker, |state| state)?;
    Ok(linker)
}

impl Runtime {
    /// Load a tool component and ask it for its spec.
    pub async fn load_tool(&self, path: &Path, limits: Limits) -> Result<ToolComponent, ToolSetError> {
        let bytes = Self::read_component(path).await?;
        let name = path.display().to_string();
        let (compiled, instance_pre) = self.prepare(&name, bytes, self.tool_linker(), "tool").await?;
        let pre = ToolPre::new(instance_pre).map_err(|err| LoadError::wrong_world(&name, "tool", &err))?;
        let spec_error = |message| ToolSetError::Spec {
            path: name.clone(),
            message,
        };
        let limits = self.clamp(&limits);
        let no_policy = ToolPolicy::default();
        let (state, _) = tool_state(
            &[],
            &no_policy,
            &limits,
            Instant::now() + limits.deadline,
            &name,
            tracing::Span::current(),
        )
        .map_err(|e| spec_error(e.to_string()))?;
        let mut store = self.new_store(state, &limits);
        let spec_pre = pre.clone();
        let call = async move {
            let tool = spec_pre.instantiate_async(&mut store).await?;
            tool.call_spec(&mut store).await
        };
        let spec = without_blocking_workers(async move { tokio::time::timeout(limits.deadline, call).await })
            .await
            .map_err(|e| spec_error(e.to_string()))?
            .map_err(|_| spec_error("timed out".into()))?
            .map_err(|e| spec_error(one_line(&e)))?;
        Ok(ToolComponent {
            spec,
            limits,
            policy: Arc::new(default_tool_policy()),
            pre,
            compiled,
        })
    }
}

impl ToolSet {
    /// A set of tools; names must be unique.
    pub fn new(tools: impl IntoIterator<Item = ToolComponent>) -> Result<Self, ToolSetError> {
        let mut set = BTreeMap::new();
        for tool in tools {
            let name = tool.spec.name.clone();
            if set.insert(name.clone(), tool).is_some() {
                return Err(ToolSetError::DuplicateName(name));
            }
        }
        Ok(Self { tools: set })
    }

    /// The tools of `tools` that `policy` grants, each restricted to its
    /// tool policy. A tool the policy does not grant is refused, so that a
    /// misconfigured deployment fails at start, not at the model's first call.
    pub fn granted(
        runtime: &Runtime,
        tools: impl IntoIterator<Item = ToolComponent>,
        policy: &EffectivePolicy,
    ) -> Result<Self, ToolSetError> {
        let restricted = tools.into_iter().map(|tool| match policy.tool(&tool.spec.name) {
            Some(tool_policy) => Ok(tool.with_policy(runtime, tool_policy)),
            None => Err(ToolSetError::NotGranted {
                tool: tool.spec.name.clone(),
                agent: policy.agent.clone(),
            }),
        });
        Self::new(restricted.collect::<Result<Vec<_>, _>>()?)
    }

    /// Specs of every tool, sorted by name.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|t| t.spec.clone()).collect()
    }

    /// Call `name` with `input` (JSON text) in a fresh sandbox.
    pub async fn call(
        &self,
        runtime: &Runtime,
        name: &str,
        input: String,
        context: &ToolCallContext,
    ) -> Result<String, ToolError> {
        let Some(tool) = self.tools.get(name) else {
            runtime.metrics().policy_denied("tool_not_granted");
            tracing::warn!(
                parent: &context.span,
                denial.kind = "tool_not_granted",
                tool = name,
                "policy denied"
            );
            // The name is guest-chosen: one shared label keeps a hostile guest
            // from minting unbounded metric series.
            runtime
                .metrics()
                .tool_call_finished(UNGRANTED_TOOL_LABEL, "not_found", Duration::ZERO);
            return Err(ToolError::NotFound(format!(
                "no tool named {name:?} is granted to this agent"
            )));
        };
        let span = tracing::info_span!(
            parent: &context.span,
            "tool",
            otel.name = %format_args!("execute_tool {name}"),
            otel.status_code = Empty,
            tool = name,
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = name,
            error.type = Empty,
        );
        let started = Instant::now();
        let result = invoke(runtime, tool, input, context, span.clone())
            .instrument(span.clone())
            .await;
        let elapsed_us = started.elapsed().as_micros() as u64;
        let outcome = outcome_label(&result);
        match &result {
            Ok(_) => tracing::info!(parent: &span, elapsed_us, "tool call succeeded"),
            Err(ToolError::Denied(denied)) => {
                runtime.metrics().policy_denied("tool_fs_denied");
                tracing::warn!(parent: &span, denial.kind = "tool_fs_denied", elapsed_us, %denied, "policy denied");
            }
            Err(err) => tracing::warn!(parent: &span, elapsed_us, error = ?err, "tool call failed"),
        }
        if result.is_err() {
            span.record("otel.status_code", "error");
            span.record("error.type", outcome);
        }
        runtime.metrics().tool_call_finished(name, outcome, started.elapsed());
        result
    }
}

/// The metric label for calls naming a tool the agent was not granted.
const UNGRANTED_TOOL_LABEL: &str = "_ungranted";

/// Stable metric label for a tool call's outcome.
fn outcome_label(result: &Result<String, ToolError>) -> &'static str {
    match result {
        Ok(_) => "succeeded",
        Err(ToolError::NotFound(_)) => "not_found",
        Err(ToolError::Denied(_)) => "denied",
        Err(ToolError::InvalidInput(_)) => "invalid_input",
        Err(ToolError::LimitExceeded(_)) => "limit_exceeded",
        Err(ToolError::Failed(_)) => "failed",
    }
}

async fn invoke(
    runtime: &Runtime,
    tool: &ToolComponent,
    input: String,
    context: &ToolCallContext,
    span: tracing::Span,
) -> Result<String, ToolError> {
    let limits = tool.limits;
    let deadline = context.deadline.min(Instant::now() + limits.deadline);
    let Ok(_slot) = tokio::time::timeout_at(deadline.into(), runtime.tool_slots().acquire()).await else {
        return Err(limit_exceeded(runtime, crate::runtime::Limit::Deadline, &limits));
    };
    let fs = ToolCallFs::begin(context.workspace.as_deref(), &tool.policy)
        .await
        .map_err(sandbox_error)?;
    let result = run_instance(tool, input, &fs.preopens, runtime, deadline, span).await;
    // A failed call's writes went to staging copies only: discarding them
    // leaves the workspace exactly as it was.
    fs.finish(result.is_ok()).await.map_err(sandbox_error)?;
    result
}

/// A tool stopped by `limit`: counted, and an event on the tool's span.
fn limit_exceeded(runtime: &Runtime, limit: crate::runtime::Limit, limits: &Limits) -> ToolError {
    runtime.metrics().limit_hit("tool", limit.as_str());
    tracing::warn!(guest = "tool", limit = limit.as_str(), "sandbox limit hit");
    ToolError::LimitExceeded(LimitExceeded::of(limit, limits).to_string())
}

fn sandbox_error(err: SandboxError) -> ToolError {
    match err {
        SandboxError::Grant { .. } => ToolError::Denied(err.to_string()),
        _ => ToolError::Failed(err.to_string()),
    }
}

/// Drive `future`, whose polls may block the thread (tool instances are
/// built with wasmtime-wasi's `allow_blocking_current_thread`, see
/// [`sandbox::tool_context`]), without blocking an async worker thread.
///
/// On a multi-thread runtime (the worker's) each poll runs inside
/// [`tokio::task::block_in_place`]: for the poll's duration the worker hands
/// its other tasks to another thread, and the call itself never waits for a
/// thread hand-off (a round trip through the blocking pool costs more than
/// the rest of a small call). A poll lasts until the guest next yields (at
/// every epoch tick, or when it waits on the network or a timer), so futures
/// sharing the caller's task, such as the job's lease heartbeat, are delayed
/// by at most one such stretch, never by the whole call. A current-thread
/// runtime cannot do that, so there the whole call runs on a blocking-pool
/// thread instead ([`on_blocking_thread`]).
async fn without_blocking_workers<T: Send + 'static>(
    future: impl Future<Output = T> + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if tokio::runtime::Handle::current().runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return on_blocking_thread(future).await;
    }
    let mut future = std::pin::pin!(future);
    Ok(std::future::poll_fn(|cx| tokio::task::block_in_place(|| future.as_mut().poll(cx))).await)
}

/// Drive `future` to completion on a tokio blocking-pool thread: one hop per
/// call instead of one per filesystem operation. Timers and network I/O
/// inside keep working through the runtime's handle. The thread is held for
/// the whole call, which `max_concurrent_tool_calls` bounds; dropping the
/// returned future does not stop the call, which ends at its own deadline
/// (never after the job's).
async fn on_blocking_thread<T: Send + 'static>(
    future: impl Future<Output = T> + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(future)).await
}

/// Instantiate the tool over `preopens` and call it once, under its limits,
/// without blocking an async worker thread.
async fn run_instance(
    tool: &ToolComponent,
    input: String,
    preopens: &[Preopen],
    runtime: &Runtime,
    deadline: Instant,
    span: tracing::Span,
) -> Result<String, ToolError> {
    let (tool, preopens, runtime) = (tool.clone(), preopens.to_vec(), runtime.clone());
    without_blocking_workers(async move { run_instance_here(&tool, input, &preopens, &runtime, deadline, span).await })
        .await
        .unwrap_or_else(|err| Err(ToolError::Failed(format!("the tool call's thread failed: {err}"))))
}

/// [`run_instance`] on the current thread, which must be allowed to block
/// (see [`without_blocking_workers`]).
async fn run_instance_here(
    tool: &ToolComponent,
    input: String,
    preopens: &[Preopen],
    runtime: &Runtime,
    deadline: Instant,
    span: tracing::Span,
) -> Result<String, ToolError> {
    let limits = tool.limits;
    let limit_error = |limit| limit_exceeded(runtime, limit, &limits);
    let (state, _stdio) =
        tool_state(preopens, &tool.policy, &limits, deadline, &tool.spec.name, span).map_err(sandbox_error)?;
    let mut store = runtime.new_store(state, &limits);
    let call = async {
        let instance = tool.pre.instantiate_async(&mut store).await?;
        instance.call_invoke(&mut store, &input).await
    };
    let result = tokio::time::timeout_at(deadline.into(), call).await;
    // A denied request is reported as such whatever the tool made of it: a
    // tool cannot hide a denial from the agent (or the logs).
    if let Some(denial) = denied_requests(store.data().host.denials()) {
        return Err(denial);
    }
    match result {
        Err(_elapsed) => Err(limit_error(crate::runtime::Limit::Deadline)),
        Ok(Err(err)) => Err(match classify(&err, store.data().limit_hit()) {
            GuestFailure::Limit(limit) => limit_error(limit),
            GuestFailure::Trap(message) => ToolError::Failed(format!("tool trapped: {message}")),
            GuestFailure::Host(message) => ToolError::Failed(format!("the host failed: {message}")),
        }),
        // A request's own timeouts end at the call's deadline too (see
        // `network`): a tool failing at that moment failed because of it.
        Ok(Ok(Err(_))) if Instant::now() >= deadline => Err(limit_error(crate::runtime::Limit::Deadline)),
        Ok(Ok(Err(tool_error))) => Err(tool_error),
        Ok(Ok(Ok(output))) if output.len() > limits.output_bytes => Err(limit_error(crate::runtime::Limit::Output)),
        Ok(Ok(Ok(output))) => match serde_json::from_str::<serde::de::IgnoredAny>(&output) {
            Ok(_) => Ok(output),
            Err(err) => Err(ToolError::Failed(format!("tool output is not valid JSON: {err}"))),
        },
    }
}

/// The tool error for the requests the host denied during a call, if any.
fn denied_requests(denials: &Denials) -> Option<ToolError> {
    let (first, more) = denials.first_and_more()?;
    Some(ToolError::Denied(match more {
        0 => first.to_string(),
        more => format!("{first} (and {more} more denied requests)"),
    }))
}

fn tool_state(
    preopens: &[Preopen],
    policy: &ToolPolicy,
    limits: &Limits,
    deadline: Instant,
    name: &str,
    span: tracing::Span,
) -> Result<(SandboxState<ToolHost>, sandbox::Stdio), sandbox::SandboxError> {
    let (wasi, stdio) = sandbox::tool_context(preopens, &policy.env, limits.stdio_bytes)?;
    let component: Arc<str> = name.into();
    let gate = NetworkGate::new(policy.network.clone().into(), component.clone(), span.clone(), deadline);
    let state = SandboxState {
        wasi,
        table: Default::default(),
        limiter: crate::runtime::StoreLimiter::new(limits),
        deadline,
        deadline_hit: false,
        log: LogContext::new(span, component),
        host: ToolHost::new(gate),
    };
    Ok((state, stdio))
}
