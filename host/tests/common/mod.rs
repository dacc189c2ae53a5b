//! Shared helpers for the integration tests: real components built from this
//! repo, and a small runtime per test.

#![allow(dead_code, missing_docs)]

pub mod logs;
pub mod mailbox_model;
pub mod moto;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wink_host::job::{JobReport, JobRequest};
use wink_host::model::{ModelProvider, Script, ScriptedProvider};
use wink_host::runtime::{AgentComponent, JobEnv, Limits, Runtime, RuntimeConfig};
use wink_host::sandbox::Workspace;
use wink_host::session::MemorySessionStore;
use wink_host::tools::ToolSet;

/// The repository root. `cargo test` sets `CARGO_MANIFEST_DIR` at run time;
/// that beats the compile-time value when a target directory shared between
/// checkouts reuses a test binary built in another checkout.
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..")
}

/// Directory holding the built guest components. `cargo xtask test` sets
/// `WINK_GUEST_DIR`; a bare `cargo test` builds the guests once itself.
pub fn guest_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("WINK_GUEST_DIR") {
            return PathBuf::from(dir);
        }
        let status = Command::new(env!("CARGO"))
            .args(["xtask", "guests"])
            .current_dir(repo_root())
            .status()
            .expect("cannot run `cargo xtask guests`");
        assert!(status.success(), "`cargo xtask guests` failed: {status}");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"));
        target.join("wasm")
    })
}

/// Path of the built guest `name`.
pub fn guest(name: &str) -> PathBuf {
    let path = guest_dir().join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "guest component {} is missing; run `cargo xtask guests`",
        path.display()
    );
    path
}

/// A runtime sized for tests. All test runtimes share one on-disk component
/// cache, so each guest is compiled once per test binary, not once per test.
pub fn runtime() -> Runtime {
    Runtime::new(&RuntimeConfig {
        max_concurrent_jobs: 16,
        max_concurrent_tool_calls: 8,
        cache_dir: Some(guest_dir().join("test-cache")),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// Limits small enough that runaway guests end quickly.
pub fn test_limits() -> Limits {
    Limits {
        fuel: 2_000_000_000,
        deadline: Duration::from_secs(20),
        memory_bytes: 64 << 20,
        ..Limits::default()
    }
}

/// A job environment with the echo model, no tools, no workspace.
pub fn env() -> JobEnv {
    env_with(Arc::new(ScriptedProvider::echo()))
}

pub fn env_with(model: Arc<dyn ModelProvider>) -> JobEnv {
    JobEnv {
        model,
        tools: Arc::new(ToolSet::default()),
        sessions: Arc::new(MemorySessionStore::default()),
        workspace: None,
        limits: test_limits(),
        model_policy: Default::default(),
    }
}

pub fn scripted(json: &str) -> Arc<dyn ModelProvider> {
    Arc::new(ScriptedProvider::new(Script::parse(json).expect("script")))
}

pub fn with_workspace(mut env: JobEnv, dir: &Path) -> JobEnv {
    env.workspace = Some(Arc::new(Workspace::open(dir).expect("workspace")));
    env
}

pub async fn load(runtime: &Runtime, name: &str) -> AgentComponent {
    runtime.load_agent(&guest(name)).await.expect("load agent")
}

pub async fn run(runtime: &Runtime, agent: &AgentComponent, input: &str, env: JobEnv) -> JobReport {
    runtime.run_agent(agent, JobRequest::new("test", input), env).await
}

/// The output of a job that must succeed, parsed.
pub fn output(report: JobReport) -> serde_json::Value {
    match report.outcome {
        Ok(text) => serde_json::from_str(&text).expect("output is JSON"),
        Err(err) => panic!("job failed: {err}"),
    }
}

pub mod mailbox_contract;
pub mod otlp;
pub mod redis;
pub mod worker_jobs;
pub mod worker_process;
