//! `cargo xtask bench tool`: the cost of one sandboxed tool call.
//!
//! Measures one `read_file` call through `ToolSet::call` (fresh instance,
//! policy-granted read-only preopen, limits, output check), sequentially with
//! a warm cache, and, when `bwrap` is installed, `bwrap ... cat` of the same
//! file in the same run: the bubblewrap-per-tool-call design this replaces.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use wink_host::policy::Policy;
use wink_host::runtime::{Limits, Runtime, RuntimeConfig};
use wink_host::sandbox::Workspace;
use wink_host::tools::{ToolCallContext, ToolSet};

const WARMUP: usize = 500;
const ITERATIONS: usize = 10_000;
const BWRAP_ITERATIONS: usize = 200;
const FILE: &str = "notes.txt";

const POLICY: &str = r#"
[agents.bench]
tools = ["read_file"]
[tools.read_file]
fs = [{ path = ".", access = "read-only" }]
"#;

fn main() {
    wink_host::allocator::tune();
    let workspace = tempfile::tempdir().expect("tempdir");
    std::fs::write(workspace.path().join(FILE), "a line of notes\n".repeat(64)).expect("write");
    // As in the worker: a multi-thread runtime, the calls made from a task
    // on one of its worker threads.
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let wink = tokio
        .block_on(tokio.spawn(measure_wink(workspace.path().to_path_buf())))
        .expect("bench task");
    let bwrap = common::measure_bwrap("tool", &bwrap_args(workspace.path()), BWRAP_ITERATIONS);
    let speedup = bwrap
        .as_ref()
        .map(|b| common::round(b["p50_us"].as_f64().unwrap_or(0.0) / wink["p50_us"].as_f64().unwrap_or(1.0)));
    common::write_report(
        "tool",
        json!({
            "scenario": "tool",
            "what": "one read_file tool call of a 1 KiB file through ToolSet::call (fresh instance, read-only preopen, limits), sequential, warm cache, from a task of a multi-thread runtime",
            "wink": wink,
            "bwrap": bwrap,
            "bwrap_command": format!("bwrap {}", bwrap_args(Path::new("<workspace>")).join(" ")),
            "speedup_p50": speedup,
            "target": {"speedup_p50": 100},
            "machine": common::machine(),
        }),
    );
}

async fn measure_wink(dir: PathBuf) -> serde_json::Value {
    let runtime = Runtime::new(&RuntimeConfig {
        max_concurrent_jobs: 1,
        max_concurrent_tool_calls: 4,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let policy = Policy::parse(POLICY, "bench")
        .and_then(|p| p.for_agent("bench", &Limits::default()))
        .expect("policy");
    let tool = runtime
        .load_tool(&common::guest("read_file"), Limits::default())
        .await
        .expect("read_file");
    let tools = ToolSet::granted(&runtime, [tool], &policy).expect("tool set");
    let context = ToolCallContext {
        workspace: Some(Arc::new(Workspace::open(&dir).expect("workspace"))),
        deadline: Instant::now() + Duration::from_secs(3600),
        span: tracing::Span::none(),
    };
    let input = json!({ "path": FILE }).to_string();
    let mut samples = Vec::with_capacity(ITERATIONS);
    for i in 0..WARMUP + ITERATIONS {
        let started = Instant::now();
        let output = tools.call(&runtime, "read_file", input.clone(), &context).await;
        let elapsed = started.elapsed();
        assert!(output.is_ok(), "{output:?}");
        if i >= WARMUP {
            samples.push(elapsed);
        }
    }
    common::summary(&samples)
}

/// `cat` needs the system's binaries and libraries; the workspace is bound
/// read-only at /w, everything else is unshared.
fn bwrap_args(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    [
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/bin",
        "/bin",
        "--ro-bind",
        &dir,
        "/w",
        "--unshare-all",
        "--die-with-parent",
        "cat",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([format!("/w/{FILE}")])
    .collect()
}
