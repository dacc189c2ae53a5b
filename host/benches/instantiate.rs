//! `cargo xtask bench instantiate`: how long it takes to start a sandbox.
//!
//! Measures instantiating and running a trivial agent component (pooling
//! allocator, warm cache) end to end through `Runtime::run_agent`, and, when
//! `bwrap` is installed, spawning `bwrap --unshare-all true` in the same run
//! for comparison with a bubblewrap-per-job design.

mod common;

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use wink_host::job::JobRequest;
use wink_host::model::ScriptedProvider;
use wink_host::runtime::{JobEnv, Limits, Runtime, RuntimeConfig};
use wink_host::session::MemorySessionStore;
use wink_host::tools::ToolSet;

const WARMUP: usize = 500;
const ITERATIONS: usize = 20_000;
const BWRAP_ITERATIONS: usize = 200;
const BWRAP_ARGS: [&str; 10] = [
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--unshare-all",
    "--die-with-parent",
    "true",
];

fn main() {
    wink_host::allocator::tune();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let wink = tokio.block_on(measure_wink());
    let bwrap = common::measure_bwrap("instantiate", &BWRAP_ARGS, BWRAP_ITERATIONS);
    let speedup = bwrap
        .as_ref()
        .map(|b| common::round(b["p50_us"].as_f64().unwrap_or(0.0) / wink["p50_us"].as_f64().unwrap_or(1.0)));
    common::write_report(
        "instantiate",
        json!({
            "scenario": "instantiate",
            "what": "instantiate + run + tear down a trivial agent component, sequentially, warm cache, pooling allocator",
            "wink": wink,
            "bwrap": bwrap,
            "bwrap_command": format!("bwrap {}", BWRAP_ARGS.join(" ")),
            "speedup_p50": speedup,
            "target": {"p50_us": 50, "speedup_p50": 200},
            "machine": common::machine(),
        }),
    );
}

async fn measure_wink() -> serde_json::Value {
    let runtime = Runtime::new(&RuntimeConfig {
        max_concurrent_jobs: 16,
        max_concurrent_tool_calls: 1,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let agent = runtime
        .load_agent(&common::guest("trivial"))
        .await
        .expect("trivial agent");
    let env = JobEnv {
        model: Arc::new(ScriptedProvider::echo()),
        tools: Arc::new(ToolSet::default()),
        sessions: Arc::new(MemorySessionStore::default()),
        workspace: None,
        limits: Limits::default(),
        model_policy: Default::default(),
    };
    let request = JobRequest::new("bench", r#"{"n":1}"#);
    let mut samples = Vec::with_capacity(ITERATIONS);
    for i in 0..WARMUP + ITERATIONS {
        let started = Instant::now();
        let report = runtime.run_agent(&agent, request.clone(), env.clone()).await;
        let elapsed = started.elapsed();
        assert!(report.outcome.is_ok(), "{:?}", report.outcome);
        if i >= WARMUP {
            samples.push(elapsed);
        }
    }
    common::summary(&samples)
}
