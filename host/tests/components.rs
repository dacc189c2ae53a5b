//! Loading components: caching, precompiled artifacts on disk, bad input.

mod common;

use std::sync::Arc;

use common::*;
use wink_host::runtime::{LoadError, Runtime, RuntimeConfig};

fn runtime_with_cache(dir: &std::path::Path) -> Runtime {
    Runtime::new(&RuntimeConfig {
        max_concurrent_jobs: 4,
        max_concurrent_tool_calls: 4,
        cache_dir: Some(dir.to_path_buf()),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

fn artifacts(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn precompiled_artifacts_are_reused_and_corrupt_ones_recompiled() {
    let cache = tempfile::tempdir().expect("tempdir");
    let first = runtime_with_cache(cache.path());
    let agent = load(&first, "trivial").await;
    let found = artifacts(cache.path());
    assert_eq!(found.len(), 1, "one artifact per component: {found:?}");
    assert!(
        found[0]
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(agent.digest().as_str()))
    );
    drop(first);

    // A second process start loads the artifact instead of compiling.
    let second = runtime_with_cache(cache.path());
    let agent = load(&second, "trivial").await;
    assert!(run(&second, &agent, "{}", env()).await.outcome.is_ok());

    // A corrupted artifact is detected by its digest and rebuilt.
    std::fs::write(&found[0], b"garbage").expect("corrupt");
    let third = runtime_with_cache(cache.path());
    let agent = load(&third, "trivial").await;
    assert!(run(&third, &agent, "{}", env()).await.outcome.is_ok());
    assert_ne!(std::fs::read(&found[0]).expect("artifact"), b"garbage");
}

#[tokio::test]
async fn same_component_is_compiled_once_and_shared() {
    let runtime = runtime();
    let bytes: Arc<[u8]> = std::fs::read(guest("trivial")).expect("read").into();
    let (a, b) = tokio::join!(
        runtime.load_agent_bytes("a", bytes.clone()),
        runtime.load_agent_bytes("b", bytes.clone())
    );
    let (a, b) = (a.expect("a"), b.expect("b"));
    assert_eq!(a.digest(), b.digest());
    assert_eq!(runtime.cache().len(), 1);
}

/// A worker whose agents are replaced by new versions keeps in memory only
/// the compiled components of the agents and tools still loaded.
#[tokio::test]
async fn a_compiled_component_is_kept_while_an_agent_or_tool_holds_it() {
    let runtime = runtime();
    let bytes: Arc<[u8]> = std::fs::read(guest("trivial")).expect("read").into();
    let first = runtime.load_agent_bytes("a", bytes.clone()).await.expect("a");
    let again = runtime.load_agent_bytes("b", bytes.clone()).await.expect("b");
    let other = load(&runtime, "hello").await;
    let tool = runtime
        .load_tool(&guest("read_file"), Default::default())
        .await
        .expect("tool");
    assert_eq!(runtime.cache().len(), 3);
    drop(first);
    assert_eq!(runtime.cache().len(), 3, "still held by the second load");
    drop(again);
    assert_eq!(runtime.cache().len(), 2);
    drop((other, tool));
    assert!(runtime.cache().is_empty());

    // A component that failed to compile is not kept either.
    let corrupt: Arc<[u8]> = b"\0asm not really".to_vec().into();
    assert!(runtime.load_agent_bytes("corrupt", corrupt).await.is_err());
    assert!(runtime.cache().is_empty());
    // Loading it again compiles it again (or reads the cache directory).
    let reloaded = runtime.load_agent_bytes("a", bytes).await.expect("reloaded");
    assert!(run(&runtime, &reloaded, "{}", env()).await.outcome.is_ok());
    assert_eq!(runtime.cache().len(), 1);
}

#[tokio::test]
async fn corrupt_component_is_a_load_error_naming_it() {
    let runtime = runtime();
    let err = runtime
        .load_agent_bytes("broken", Arc::from(&b"\0asm\x0d\0\x01\0garbage"[..]))
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::Invalid { .. }), "{err:?}");
    assert!(err.to_string().starts_with("invalid component broken:"), "{err}");
}

#[tokio::test]
async fn missing_component_file_is_a_read_error_naming_the_path() {
    let runtime = runtime();
    let err = runtime
        .load_agent(std::path::Path::new("/nonexistent/agent.wasm"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/agent.wasm"), "{err}");
}

#[tokio::test]
async fn a_tool_component_is_not_accepted_as_an_agent() {
    let runtime = runtime();
    let err = runtime.load_agent(&guest("read_file")).await.unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld { world: "agent", .. }), "{err:?}");
}

#[tokio::test]
async fn invalid_job_input_is_rejected_before_instantiation() {
    let runtime = runtime();
    let agent = load(&runtime, "trivial").await;
    let report = run(&runtime, &agent, "{not json", env()).await;
    let err = report.outcome.unwrap_err();
    assert_eq!(err.kind(), "invalid_input");
    assert!(err.to_string().starts_with("job input is not valid JSON"), "{err}");
}
