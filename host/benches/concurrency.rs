//! `cargo xtask bench concurrency`: what an agent waiting on a model costs.
//!
//! Holds N jobs at once inside a model call (a provider that parks every
//! call until all N have arrived), then reads the process's resident memory.
//! RSS per job = (RSS with N parked - RSS before) / N.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::watch;
use wink_host::job::JobRequest;
use wink_host::model::{CallContext, ConverseRequest, ConverseResponse, ModelError, ModelProvider, ScriptedProvider};
use wink_host::runtime::{JobEnv, Limits, Runtime, RuntimeConfig};
use wink_host::session::MemorySessionStore;
use wink_host::tools::ToolSet;

const SIZES: [usize; 2] = [1_000, 10_000];

/// Parks every call until released, counting how many are parked.
#[derive(Debug)]
struct ParkingProvider {
    parked: AtomicUsize,
    release: watch::Receiver<bool>,
    answer: ScriptedProvider,
}

#[async_trait]
impl ModelProvider for ParkingProvider {
    async fn converse(&self, request: &ConverseRequest, context: &CallContext) -> Result<ConverseResponse, ModelError> {
        self.parked.fetch_add(1, Ordering::SeqCst);
        let mut release = self.release.clone();
        let _ = release.wait_for(|released| *released).await;
        self.answer.converse(request, context).await
    }
}

fn main() {
    wink_host::allocator::tune();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let results: Vec<_> = SIZES.iter().map(|&n| tokio.block_on(hold(n))).collect();
    common::write_report(
        "concurrency",
        json!({
            "scenario": "concurrency",
            "what": "N hello-agent jobs parked inside a model call at once; RSS growth per parked job",
            "results": results,
            "target": {"jobs": 10_000, "rss_per_job_kib": 300},
            "machine": common::machine(),
        }),
    );
}

async fn hold(jobs: usize) -> serde_json::Value {
    let runtime = Runtime::new(&RuntimeConfig {
        max_concurrent_jobs: jobs as u32,
        max_concurrent_tool_calls: 1,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let agent = runtime.load_agent(&common::guest("hello")).await.expect("hello agent");
    let (release_tx, release) = watch::channel(false);
    let provider = Arc::new(ParkingProvider {
        parked: AtomicUsize::new(0),
        release,
        answer: ScriptedProvider::echo(),
    });
    let env = JobEnv {
        model: provider.clone(),
        tools: Arc::new(ToolSet::default()),
        sessions: Arc::new(MemorySessionStore::default()),
        workspace: None,
        limits: Limits {
            deadline: Duration::from_secs(600),
            ..Limits::default()
        },
        model_policy: Default::default(),
    };
    // One job first, so one-time costs (lazy statics, first-touch pages of
    // the component image) are not charged to the N.
    let warm = runtime
        .run_agent(&agent, JobRequest::new("warm", "{}"), env_released(&env))
        .await;
    assert!(warm.outcome.is_ok(), "{:?}", warm.outcome);
    let baseline = common::rss_kib();

    let started = Instant::now();
    let handles: Vec<_> = (0..jobs)
        .map(|i| {
            let (runtime, agent, env) = (runtime.clone(), agent.clone(), env.clone());
            tokio::spawn(async move {
                runtime
                    .run_agent(&agent, JobRequest::new(format!("job-{i}"), "{}"), env)
                    .await
            })
        })
        .collect();
    while provider.parked.load(Ordering::SeqCst) < jobs {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let admitted_in = started.elapsed();
    let peak = common::rss_kib();
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
    release_tx.send(true).expect("release");
    let mut failed = 0;
    for handle in handles {
        if handle.await.map(|r| r.outcome.is_err()).unwrap_or(true) {
            failed += 1;
        }
    }
    let total = started.elapsed();
    json!({
        "jobs": jobs,
        "failed": failed,
        "baseline_rss_kib": baseline,
        "peak_rss_kib": peak,
        "rss_per_job_kib": common::round((peak.saturating_sub(baseline)) as f64 / jobs as f64),
        "os_threads": threads,
        "all_parked_after_ms": admitted_in.as_millis() as u64,
        "total_ms": total.as_millis() as u64,
    })
}

/// The same environment with a model that answers at once (for warm-up).
fn env_released(env: &JobEnv) -> JobEnv {
    JobEnv {
        model: Arc::new(ScriptedProvider::echo()),
        ..env.clone()
    }
}
