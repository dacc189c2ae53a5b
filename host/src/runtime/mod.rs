//! The wasmtime engine, its component cache, and running guests under limits.
//!
//! One [`Runtime`] serves the whole process: one `Engine` with the pooling
//! instance allocator and copy-on-write memory images, so that instantiating
//! a cached component costs microseconds; an epoch ticker that lets the host
//! preempt guest code; and admission control so that jobs beyond the pool's
//! capacity wait for a slot instead of failing.

mod agent;
mod cache;
mod limits;
mod model_call;
mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::telemetry::Metrics;
use wasmtime::component::Linker;
use wasmtime::{Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline};

pub use agent::{AgentComponent, JobEnv, agent_name};
pub use cache::{CachedComponent, ComponentCache, Digest, LoadError};
pub use limits::{Limit, LimitExceeded, Limits};

pub(crate) use agent::AgentHost;
pub(crate) use cache::one_line;
pub(crate) use limits::StoreLimiter;
pub(crate) use state::{LogContext, SandboxState};

/// Process-wide runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Agent jobs instantiated at once; further jobs wait for a slot.
    pub max_concurrent_jobs: u32,
    /// Tool instances alive at once; further calls wait for a slot.
    pub max_concurrent_tool_calls: u32,
    /// Ceiling for any job's or tool's memory limit, in bytes.
    pub max_memory_bytes: usize,
    /// Where precompiled components are kept across restarts (none: memory only).
    pub cache_dir: Option<PathBuf>,
    /// How often guests are checked against their deadline and yield.
    pub epoch_tick: Duration,
    /// Largest wasm call stack, in bytes.
    pub max_wasm_stack: usize,
    /// This process's name in logs and spans (`worker_id`); none:
    /// `<hostname>-<pid>`.
    pub worker_id: Option<String>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_concurrent_jobs: 1000,
            max_concurrent_tool_calls: 256,
            max_memory_bytes: 4 << 30,
            cache_dir: None,
            epoch_tick: Duration::from_millis(10),
            max_wasm_stack: 512 << 10,
            worker_id: None,
        }
    }
}

/// Errors creating the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime rejected the engine configuration.
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
    /// The host functions could not be linked.
    #[error("cannot link host functions: {0}")]
    Link(String),
    /// The component cache could not be set up.
    #[error(transparent)]
    Cache(#[from] LoadError),
}

/// The process-wide engine and everything shared between jobs. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
    /// Per handle, so that a worker with an id of its own names itself the
    /// same in the job spans the runtime records ([`Runtime::with_worker_id`]).
    worker_id: Arc<str>,
}

struct RuntimeInner {
    engine: Engine,
    cache: ComponentCache,
    agent_linker: Linker<SandboxState<AgentHost>>,
    tool_linker: Linker<SandboxState<crate::tools::ToolHost>>,
    job_slots: Semaphore,
    tool_slots: Semaphore,
    max_memory_bytes: usize,
    metrics: Arc<Metrics>,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache", &self.inner.cache)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Create the engine, linkers, cache and epoch ticker.
    pub fn new(config: &RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine = Engine::new(&engine_config(config)).map_err(|e| RuntimeError::Engine(one_line(&e)))?;
        let agent_linker = agent::linker(&engine).map_err(|e| RuntimeError::Link(one_line(&e)))?;
        let tool_linker = crate::tools::linker(&engine).map_err(|e| RuntimeError::Link(one_line(&e)))?;
        let cache = ComponentCache::new(engine.clone(), config.cache_dir.as_deref())?;
        let ticker = EpochTicker::start(&engine, config.epoch_tick);
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                cache,
                agent_linker,
                tool_linker,
                job_slots: Semaphore::new(config.max_concurrent_jobs as usize),
                tool_slots: Semaphore::new(config.max_concurrent_tool_calls as usize),
                max_memory_bytes: config.max_memory_bytes,
                metrics: Arc::new(Metrics::new()),
                _ticker: ticker,
            }),
            worker_id: config.worker_id.clone().unwrap_or_else(default_worker_id).into(),
        })
    }

    /// The shared engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The metrics every job and tool call is recorded into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// This process's name in logs and spans.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// This runtime (the same engine, cache, slots and metrics) naming
    /// itself `worker_id` in the spans of the jobs it runs.
    pub fn with_worker_id(&self, worker_id: &str) -> Self {
        Self {
            inner: self.inner.clone(),
            worker_id: worker_id.into(),
        }
    }

    /// The component cache.
    pub fn cache(&self) -> &ComponentCache {
        &self.inner.cache
    }

    pub(crate) fn agent_linker(&self) -> &Linker<SandboxState<AgentHost>> {
        &self.inner.agent_linker
    }

    pub(crate) fn tool_linker(&self) -> &Linker<SandboxState<crate::tools::ToolHost>> {
        &self.inner.tool_linker
    }

    pub(crate) fn job_slots(&self) -> &Semaphore {
        &self.inner.job_slots
    }

    pub(crate) fn tool_slots(&self) -> &Semaphore {
        &self.inner.tool_slots
    }

    /// `limits` with the memory limit clamped to what the pool can hold.
    pub(crate) fn clamp(&self, limits: &Limits) -> Limits {
        Limits {
            memory_bytes: limits.memory_bytes.min(self.inner.max_memory_bytes),
            ..*limits
        }
    }

    /// A store for one guest, armed with its fuel, memory and deadline limits.
    pub(crate) fn new_store<H: Send + 'static>(
        &self,
        state: SandboxState<H>,
        limits: &Limits,
    ) -> Store<SandboxState<H>> {
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|state| &mut state.limiter);
        // Fuel is only unavailable when the engine lacks `consume_fuel`,
        // which `engine_config` always enables.
        let _ = store.set_fuel(limits.fuel);
        // What one call into the host may carry. Wasmtime's default is
        // 128 MiB whatever the guest's memory, and a list's items may all
        // point at the same bytes: a guest could make each call cost the
        // host far more than the memory it is granted.
        store.set_hostcall_fuel(limits.memory_bytes);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if Instant::now() >= state.deadline {
                state.deadline_hit = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            // Yield at every tick so one busy guest cannot starve the others
            // sharing this worker thread.
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }
}

/// The largest component read from a file or fetched from S3. Compiled
/// components of real agents are a few MiB; this bounds what a job naming
/// a hostile file or object can make the worker hold.
pub(crate) const MAX_COMPONENT_BYTES: u64 = 256 << 20;

fn too_large(bytes: u64) -> String {
    format!("at least {bytes} bytes, over the limit of {MAX_COMPONENT_BYTES}")
}

impl Runtime {
    /// Read a component file: a regular file of at most
    /// [`MAX_COMPONENT_BYTES`]. A job may name any path, and a device
    /// (`/dev/zero`) or a FIFO would otherwise grow the buffer until the
    /// worker is killed, or never return.
    pub(crate) async fn read_component(path: &std::path::Path) -> Result<Arc<[u8]>, LoadError> {
        use tokio::io::AsyncReadExt as _;
        let unreadable = |source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        };
        let refused = |message: String| unreadable(std::io::Error::new(std::io::ErrorKind::InvalidInput, message));
        // Checked before opening: opening a FIFO waits for a writer.
        let metadata = tokio::fs::metadata(path).await.map_err(unreadable)?;
        if !metadata.is_file() {
            return Err(refused("not a regular file".to_owned()));
        }
        if metadata.len() > MAX_COMPONENT_BYTES {
            return Err(refused(too_large(metadata.len())));
        }
        let file = tokio::fs::File::open(path).await.map_err(unreadable)?;
        let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
        // The file may have grown since: read one byte past the limit at most.
        file.take(MAX_COMPONENT_BYTES + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(unreadable)?;
        if bytes.len() as u64 > MAX_COMPONENT_BYTES {
            return Err(refused(too_large(bytes.len() as u64)));
        }
        Ok(bytes.into())
    }

    /// Compile `bytes` (or fetch them from the cache) and pre-instantiate the
    /// component against `linker`, which provides the imports of `world`.
    pub(crate) async fn prepare<T: 'static>(
        &self,
        name: &str,
        bytes: Arc<[u8]>,
        linker: &Linker<T>,
        world: &'static str,
    ) -> Result<(CachedComponent, wasmtime::component::InstancePre<T>), LoadError> {
        let compiled = self.cache().get(name, bytes).await?;
        let instance_pre = linker
            .instantiate_pre(compiled.component())
            .map_err(|err| LoadError::wrong_world(name, world, &err))?;
        Ok((compiled, instance_pre))
    }
}

/// `<hostname>-<pid>`. The host name comes from `HOSTNAME` (a pod's name in
/// Kubernetes), else the kernel.
fn default_worker_id() -> String {
    let hostname = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{hostname}-{}", std::process::id())
}

/// How a guest call failed, in terms of the limit that caused it if any.
pub(crate) enum GuestFailure {
    Limit(Limit),
    Trap(String),
    /// A host service failed during one of the guest's calls.
    Host(String),
}

/// A host service that failed while a guest called into the host (the
/// usage ledger unreachable): not the guest's doing, and another attempt
/// may succeed. Returned from host functions as their error, which ends
/// the guest's call.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct HostFault(pub(crate) String);

/// Attribute a failed guest call: a recorded limit hit wins (a memory-limit
/// refusal usually surfaces as an `unreachable` trap from the guest's
/// allocator), then wasmtime's own trap codes.
pub(crate) fn classify(err: &wasmtime::Error, recorded: Option<Limit>) -> GuestFailure {
    if let Some(limit) = recorded {
        return GuestFailure::Limit(limit);
    }
    if let Some(fault) = err.downcast_ref::<HostFault>() {
        return GuestFailure::Host(fault.0.clone());
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => GuestFailure::Limit(Limit::Fuel),
        Some(Trap::StackOverflow) => GuestFailure::Limit(Limit::Stack),
        Some(Trap::Interrupt) => GuestFailure::Limit(Limit::Deadline),
        _ => GuestFailure::Trap(one_line(err)),
    }
}

/// Bytes at the start of each linear memory slot kept resident between uses.
/// Rust guests place their 1 MiB shadow stack first, then data and heap, so
/// the pages a short job dirties lie within the first couple of MiB. Only
/// dirty pages are reset (wasmtime scans the page map), so this costs RSS
/// only for memory a previous job actually touched.
const MEMORY_KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// Bytes of each table and fiber stack slot kept resident between uses.
const STACK_AND_TABLE_KEEP_RESIDENT_BYTES: usize = 128 << 10;

fn engine_config(config: &RuntimeConfig) -> wasmtime::Config {
    let instances = config.max_concurrent_jobs + config.max_concurrent_tool_calls;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        // A Rust component instantiates a handful of core modules (the
        // program plus adapter shims); one linear memory and a few tables.
        .total_core_instances(instances.saturating_mul(4))
        .total_memories(instances)
        .total_tables(instances.saturating_mul(4))
        .total_stacks(instances)
        .max_memory_size(config.max_memory_bytes)
        // Reset a freed slot by zeroing its first pages in place instead of
        // handing them back to the kernel: the next job on that slot then
        // touches no fresh pages, which is most of an instantiation's cost.
        // Reset only the pages a job dirtied (Linux 6.7+ PAGEMAP_SCAN; off by
        // default in wasmtime). Without it the whole keep-resident window is
        // zeroed on every teardown, faulting in pages no job ever touched.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT_BYTES)
        .table_keep_resident(STACK_AND_TABLE_KEEP_RESIDENT_BYTES)
        .async_stack_keep_resident(STACK_AND_TABLE_KEEP_RESIDENT_BYTES);
    let mut wasm = wasmtime::Config::new();
    wasm.consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(config.max_wasm_stack)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    wasm
}

/// Advances the engine's epoch on a dedicated thread until the engine is gone.
struct EpochTicker;

impl EpochTicker {
    fn start(engine: &Engine, tick: Duration) -> Self {
        let engine = engine.weak();
        std::thread::Builder::new()
            .name("wink-epoch".into())
            .spawn(move || {
                while let Some(engine) = engine.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(tick);
                }
            })
            .map(|_| Self)
            .unwrap_or_else(|err| {
                // Without a ticker, deadlines still hold through the host-side
                // timeout; guests merely lose preemption at epoch boundaries.
                tracing::error!(error = %err, "cannot start the epoch ticker thread");
                Self
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_component_file_over_the_limit_is_refused_before_it_is_read() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        // Sparse: no disk space is taken, and reading it would take seconds.
        file.as_file().set_len(MAX_COMPONENT_BYTES + 1).expect("set_len");
        let err = Runtime::read_component(file.path()).await.expect_err("over the limit");
        assert!(
            err.to_string()
                .ends_with(": at least 268435457 bytes, over the limit of 268435456"),
            "{err}"
        );
    }
}
