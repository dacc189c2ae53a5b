//! Tools under a policy: per-tool filesystem grants, environment variables
//! and limits, denials that name what was denied, and adversarial tools
//! that must stay contained.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use wink_host::bindings::types::ToolError;
use wink_host::policy::{EffectivePolicy, Policy};
use wink_host::runtime::{Limits, Runtime};
use wink_host::sandbox::Workspace;
use wink_host::tools::{ToolCallContext, ToolSet, ToolSetError};

const POLICY: &str = r#"
[agents.tester]
tools = ["read_file", "write_file", "list_dir", "search", "evil_tool"]

[tools.read_file]
fs = [{ path = "docs", access = "read-only" }, { path = "shared", access = "read-only" }]

[tools.write_file]
fs = [{ path = ".", access = "read-only" }, { path = "out", access = "read-write" }]

[tools.list_dir]
fs = [{ path = ".", access = "read-only" }]

[tools.search]
fs = [{ path = "docs", access = "read-only" }]

[tools.evil_tool]
fs = [{ path = ".", access = "read-write" }]
env = ["PATH"]
limits = { fuel = 200_000_000, memory = "32MiB", timeout = "5s", output_bytes = "64KiB" }
"#;

fn effective(text: &str) -> EffectivePolicy {
    Policy::parse(text, "test")
        .expect("policy")
        .for_agent("tester", &Limits::default())
        .expect("agent")
}

async fn tool_set(runtime: &Runtime, names: &[&str], policy: &EffectivePolicy) -> Result<Tools, ToolSetError> {
    let mut tools = Vec::new();
    for name in names {
        tools.push(runtime.load_tool(&guest(name), Limits::default()).await.expect("tool"));
    }
    Ok(Tools {
        runtime: runtime.clone(),
        set: ToolSet::granted(runtime, tools, policy)?,
    })
}

/// A workspace with `docs/a.txt`, `secret.txt`, an empty `out/` and `shared/`.
fn workspace() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    for dir in ["docs", "out", "shared"] {
        std::fs::create_dir(root.path().join(dir)).expect("mkdir");
    }
    std::fs::write(root.path().join("docs/a.txt"), "alpha\nbeta TODO\n").expect("write");
    std::fs::write(root.path().join("secret.txt"), "s3cret").expect("write");
    root
}

fn context(dir: &Path) -> ToolCallContext {
    ToolCallContext {
        workspace: Some(Arc::new(Workspace::open(dir).expect("workspace"))),
        deadline: Instant::now() + Duration::from_secs(30),
        span: tracing::Span::none(),
    }
}

/// The tools of one test, with the runtime that loaded them.
#[derive(Debug)]
struct Tools {
    runtime: Runtime,
    set: ToolSet,
}

async fn call(tools: &Tools, name: &str, input: Value, ctx: &ToolCallContext) -> Result<Value, ToolError> {
    let output = tools.set.call(&tools.runtime, name, input.to_string(), ctx).await?;
    Ok(serde_json::from_str(&output).expect("tool output is JSON"))
}

fn denied(result: Result<Value, ToolError>) -> String {
    match result {
        Err(ToolError::Denied(message)) => message,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn grants_allow_what_they_name_and_deny_the_rest_by_name() {
    let runtime = runtime();
    let policy = effective(POLICY);
    let tools = tool_set(&runtime, &["read_file", "write_file", "evil_tool"], &policy)
        .await
        .expect("tools");
    let root = workspace();
    let ctx = context(root.path());

    let wrote = call(&tools, "write_file", json!({"path": "out/r.md", "content": "hi"}), &ctx).await;
    assert_eq!(wrote.expect("write")["bytes"], json!(2));
    assert_eq!(
        std::fs::read_to_string(root.path().join("out/r.md")).expect("read"),
        "hi"
    );

    // A read-only path written.
    let message = denied(call(&tools, "write_file", json!({"path": "docs/b.md", "content": "x"}), &ctx).await);
    assert!(message.starts_with("docs/b.md: not permitted"), "{message}");
    assert!(!root.path().join("docs/b.md").exists());

    // A path outside every grant of the tool.
    let read = call(&tools, "read_file", json!({"path": "docs/a.txt"}), &ctx).await;
    assert_eq!(read.expect("read")["content"], json!("alpha\nbeta TODO\n"));
    let message = denied(call(&tools, "read_file", json!({"path": "secret.txt"}), &ctx).await);
    assert!(message.starts_with("secret.txt: outside"), "{message}");

    // Only listed environment variables reach the tool.
    let env = call(
        &tools,
        "evil_tool",
        json!({"ops": [{"env": "PATH"}, {"env": "HOME"}]}),
        &ctx,
    )
    .await
    .expect("env");
    assert_eq!(env["results"][0]["ok"], json!(std::env::var("PATH").expect("PATH")));
    assert_eq!(env["results"][1]["ok"], Value::Null, "HOME is not listed: {env}");
}

#[tokio::test]
async fn a_tool_the_policy_does_not_grant_is_refused_or_not_found() {
    let runtime = runtime();
    let narrow = effective("[agents.tester]\ntools = [\"read_file\"]\n[tools.read_file]\n");
    let err = tool_set(&runtime, &["read_file", "write_file"], &narrow)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tool \"write_file\" is not granted to agent \"tester\" by the policy"
    );
    let tools = tool_set(&runtime, &["read_file"], &narrow).await.expect("tools");
    let root = workspace();
    match call(&tools, "write_file", json!({}), &context(root.path())).await {
        Err(ToolError::NotFound(message)) => assert!(message.contains("\"write_file\""), "{message}"),
        other => panic!("expected not-found, got {other:?}"),
    }
}

#[tokio::test]
async fn list_dir_globs_and_search_finds_lines_within_bounds() {
    let runtime = runtime();
    let tools = tool_set(&runtime, &["list_dir", "search"], &effective(POLICY))
        .await
        .expect("tools");
    let root = workspace();
    std::fs::write(root.path().join("docs/b.md"), "TODO one\nnothing\nTODO two\n").expect("write");
    let ctx = context(root.path());

    let listed = call(&tools, "list_dir", json!({"pattern": "docs/*"}), &ctx)
        .await
        .expect("list");
    let paths: Vec<&str> = listed["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["path"].as_str().expect("path"))
        .collect();
    assert_eq!(paths, ["docs/a.txt", "docs/b.md"]);
    let capped = call(&tools, "list_dir", json!({"max_results": 1}), &ctx)
        .await
        .expect("list");
    assert_eq!(capped["truncated"], json!(true));

    let found = call(&tools, "search", json!({"pattern": "TODO", "dir": "docs"}), &ctx)
        .await
        .expect("search");
    assert_eq!(found["matches"].as_array().map(Vec::len), Some(3), "{found}");
    assert_eq!(
        found["matches"][0],
        json!({"path": "docs/a.txt", "line": 2, "text": "beta TODO"})
    );
    let capped = call(
        &tools,
        "search",
        json!({"pattern": "TODO", "dir": "docs", "max_results": 2}),
        &ctx,
    )
    .await
    .expect("search");
    assert_eq!(capped["truncated"], json!(true));
    let bad = call(&tools, "search", json!({"pattern": "("}), &ctx).await;
    assert!(
        matches!(&bad, Err(ToolError::InvalidInput(m)) if m.starts_with("pattern:")),
        "{bad:?}"
    );
    // search is granted docs/ only.
    let message = denied(call(&tools, "search", json!({"pattern": "s3cret", "dir": "."}), &ctx).await);
    assert!(message.starts_with(".: outside"), "{message}");
}

#[tokio::test]
async fn adversarial_tools_hit_their_policy_limits_and_become_tool_errors() {
    let runtime = runtime();
    let tools = tool_set(&runtime, &["evil_tool"], &effective(POLICY))
        .await
        .expect("tools");
    let root = workspace();
    let ctx = context(root.path());
    for (then, expected) in [
        ("loop", "fuel limit exceeded (200000000 fuel)"),
        ("memory", "memory limit exceeded (33554432 bytes)"),
        ("output", "output limit exceeded (65536 bytes)"),
    ] {
        match call(&tools, "evil_tool", json!({"then": then}), &ctx).await {
            Err(ToolError::LimitExceeded(message)) => assert_eq!(message, expected, "{then}"),
            other => panic!("{then}: expected a limit error, got {other:?}"),
        }
    }
    let trapped = call(&tools, "evil_tool", json!({"then": "trap"}), &ctx).await;
    assert!(
        matches!(&trapped, Err(ToolError::Failed(m)) if m.starts_with("tool trapped")),
        "{trapped:?}"
    );
    // The tool set is still usable after every failure.
    assert!(call(&tools, "evil_tool", json!({}), &ctx).await.is_ok());
}

#[tokio::test]
async fn symlinks_planted_by_a_tool_lead_nowhere_outside() {
    let runtime = runtime();
    let tools = tool_set(&runtime, &["evil_tool", "read_file"], &effective(POLICY))
        .await
        .expect("tools");
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("passwd"), "root:x").expect("write");
    let root = workspace();
    let ctx = context(root.path());
    let target = outside.path().display().to_string();

    // Through the symlink, inside the same call: refused by the preopen.
    let ops = json!({"ops": [
        {"symlink": [target, "out/escape"]},
        {"read": "out/escape/passwd"},
        {"symlink": ["../../..", "out/up"]},
        {"read": "out/up/etc/hostname"},
    ]});
    let out = call(&tools, "evil_tool", ops, &ctx).await.expect("ops");
    assert!(
        out["results"][0]["error"].to_string().contains("not-permitted"),
        "{out}"
    );
    for read in [1, 3] {
        assert!(out["results"][read].get("error").is_some(), "{out}");
    }

    // Swapping a granted directory for a symlink before a later call: the
    // host refuses to preopen it, naming the grant.
    // (wasmtime-wasi refuses absolute symlink targets, so point it inside.)
    let swap = json!({"ops": [{"rename": ["shared", "shared.old"]}, {"symlink": ["docs", "shared"]}]});
    let out = call(&tools, "evil_tool", swap, &ctx).await.expect("swap");
    assert_eq!(out["results"][1], json!({"ok": null}), "{out}");
    let message = denied(call(&tools, "read_file", json!({"path": "shared/a.txt"}), &ctx).await);
    assert_eq!(message, "filesystem grant \"shared\" denied: shared is a symlink");
}

/// Every entry below `root`: relative path, mode, and content or link target.
fn tree(root: &Path) -> Vec<(String, u32, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut entries = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let content = if meta.is_symlink() {
                std::fs::read_link(&path)
                    .expect("link")
                    .display()
                    .to_string()
                    .into_bytes()
            } else if meta.is_dir() {
                pending.push(path.clone());
                Vec::new()
            } else {
                std::fs::read(&path).expect("read")
            };
            let name = path.strip_prefix(root).expect("inside").display().to_string();
            entries.push((name, meta.mode(), content));
        }
    }
    entries.sort();
    entries
}

/// 1,200 files in 40 directories, with a few different modes.
fn big_workspace() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().expect("tempdir");
    for d in 0..40 {
        let dir = root.path().join(format!("d{d}"));
        std::fs::create_dir(&dir).expect("mkdir");
        for f in 0..30 {
            let file = dir.join(format!("f{f}.txt"));
            std::fs::write(&file, format!("file {d}/{f}\n").repeat(f + 1)).expect("write");
            let mode = [0o644, 0o600, 0o755][f % 3];
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
    }
    root
}

#[tokio::test]
async fn failed_calls_leave_a_large_workspace_byte_identical_and_successful_ones_commit() {
    let runtime = runtime();
    let tools = tool_set(&runtime, &["evil_tool"], &effective(POLICY))
        .await
        .expect("tools");
    let root = big_workspace();
    let ctx = context(root.path());
    let ops = json!([
        {"write": ["d3/f10.txt", "overwritten"]},
        {"write": ["new.txt", "new"]},
        {"remove": "d0/f0.txt"},
        {"rename": ["d1/f1.txt", "moved.txt"]},
        {"mkdir": "newdir/sub"},
        {"symlink": ["d0", "link"]},
    ]);
    let before = tree(root.path());
    assert!(before.len() >= 1_000);
    for then in ["error", "trap", "loop", "memory", "output"] {
        let result = call(&tools, "evil_tool", json!({"ops": ops, "then": then}), &ctx).await;
        assert!(result.is_err(), "{then}: {result:?}");
        assert!(tree(root.path()) == before, "{then}: the workspace changed");
    }

    let done = call(&tools, "evil_tool", json!({"ops": ops}), &ctx)
        .await
        .expect("commit");
    assert!(
        done["results"]
            .as_array()
            .expect("results")
            .iter()
            .all(|r| r.get("ok").is_some()),
        "{done}"
    );
    let after = tree(root.path());
    let read = |p: &str| std::fs::read_to_string(root.path().join(p)).expect("read");
    assert_eq!(read("d3/f10.txt"), "overwritten");
    assert_eq!(read("new.txt"), "new");
    assert_eq!(read("moved.txt"), "file 1/1\n".repeat(2));
    assert!(!root.path().join("d0/f0.txt").exists() && !root.path().join("d1/f1.txt").exists());
    assert!(root.path().join("newdir/sub").is_dir());
    assert_eq!(
        std::fs::read_link(root.path().join("link")).expect("link"),
        Path::new("d0")
    );

    // A failure after a commit rolls back to the committed state, and the
    // next call sees that state, not the failed call's writes.
    let undo = json!({"ops": [{"remove": "new.txt"}, {"write": ["moved.txt", "x"]}], "then": "trap"});
    assert!(call(&tools, "evil_tool", undo, &ctx).await.is_err());
    assert!(tree(root.path()) == after, "the workspace changed after a trap");
    let seen = call(&tools, "evil_tool", json!({"ops": [{"read": "new.txt"}]}), &ctx)
        .await
        .expect("read");
    assert_eq!(seen["results"][0]["ok"], json!("new"));
}

#[tokio::test]
async fn a_commit_that_fails_part_way_is_rolled_back_and_reported() {
    // Two read-write grants whose staging copies conflict: through the `.`
    // copy the tool turns `out` into a file, through the `out` copy it
    // writes into `out`. Committing `.` first succeeds; committing `out`
    // then finds its directory changed and fails. The first grant's commit
    // must be undone: the workspace ends exactly as before the call.
    let policy = effective(
        r#"
[agents.tester]
tools = ["evil_tool"]
[tools.evil_tool]
fs = [{ path = ".", access = "read-write" }, { path = "out", access = "read-write" }]
"#,
    );
    let runtime = runtime();
    let tools = tool_set(&runtime, &["evil_tool"], &policy).await.expect("tools");
    let root = workspace();
    std::fs::write(root.path().join("out/a.txt"), "kept").expect("write");
    let ctx = context(root.path());
    let before = tree(root.path());

    // `./x` resolves through the `.` preopen (libc picks the longest
    // preopen that is a prefix of the path as written).
    let ops = json!({"ops": [
        {"write": ["out/a.txt", "changed through out"]},
        {"write": ["./docs/a.txt", "changed through ."]},
        {"rename": ["./out", "./out.old"]},
        {"write": ["./out", "out is a file now"]},
    ]});
    let result = call(&tools, "evil_tool", ops, &ctx).await;
    let Err(ToolError::Failed(message)) = &result else {
        panic!("expected a failed commit, got {result:?}");
    };
    assert!(
        message.starts_with("cannot commit the tool's changes to read-write grant \"out\": the granted directory changed during the call"),
        "{message}"
    );
    assert!(
        message.ends_with("every change was rolled back, the workspace is as it was before the call"),
        "{message}"
    );
    assert!(
        tree(root.path()) == before,
        "the workspace changed: {:?}",
        tree(root.path())
    );

    // The discarded staging copies are rebuilt: the next call works.
    let ok = call(
        &tools,
        "evil_tool",
        json!({"ops": [{"write": ["out/b.txt", "b"]}]}),
        &ctx,
    )
    .await
    .expect("next call");
    assert_eq!(ok["results"][0], json!({"ok": null}));
    assert_eq!(
        std::fs::read_to_string(root.path().join("out/b.txt")).expect("read"),
        "b"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("out/a.txt")).expect("read"),
        "kept"
    );
}

/// On a multi-thread runtime (the worker's) a tool call runs on the caller's
/// task; futures sharing that task, like the job's lease heartbeat, must keep
/// running while the tool does, and the tool's limits must still hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_tool_call_does_not_stall_its_task_on_a_multi_thread_runtime() {
    let runtime = runtime();
    let tools = tool_set(&runtime, &["evil_tool", "read_file"], &effective(POLICY))
        .await
        .expect("tools");
    let root = workspace();
    let ctx = context(root.path());
    let read = call(&tools, "read_file", json!({"path": "docs/a.txt"}), &ctx).await;
    assert_eq!(read.expect("read_file")["content"], "alpha\nbeta TODO\n");
    let prefix = call(&tools, "read_file", json!({"path": "docs/a.txt", "max_bytes": 3}), &ctx).await;
    assert_eq!(
        prefix.expect("read_file"),
        json!({"path": "docs/a.txt", "content": "alp", "bytes": 16, "truncated": true})
    );

    let mut ticks = 0_u32;
    let ticker = async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
            ticks += 1;
        }
    };
    let looping = call(&tools, "evil_tool", json!({"then": "loop"}), &ctx);
    let started = Instant::now();
    let result = tokio::select! {
        result = looping => result,
        () = ticker => unreachable!("the ticker never ends"),
    };
    match result {
        Err(ToolError::LimitExceeded(message)) => assert_eq!(message, "fuel limit exceeded (200000000 fuel)"),
        other => panic!("expected the fuel limit, got {other:?}"),
    }
    // The guest yields to its task at every epoch tick (10 ms): a call that
    // held the task for its whole run would leave the ticker at most one tick.
    assert!(ticks >= 3, "{ticks} ticks in {:?}", started.elapsed());
}

/// A call whose future is dropped mid-call (its job cancelled or timed out)
/// must leave nothing behind: what it wrote to its staging copy is never
/// committed by a later call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_a_call_dropped_mid_call_are_never_committed() {
    let runtime = runtime();
    let tools = tool_set(&runtime, &["evil_tool"], &effective(POLICY))
        .await
        .expect("tools");
    let root = workspace();
    let ctx = context(root.path());
    let dropped = call(
        &tools,
        "evil_tool",
        json!({"ops": [{"write": ["dropped.txt", "from a dropped call"]}], "then": "loop"}),
        &ctx,
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(30), dropped).await.is_err(),
        "the looping call should still be running"
    );
    let next = call(
        &tools,
        "evil_tool",
        json!({"ops": [{"write": ["kept.txt", "kept"]}]}),
        &ctx,
    )
    .await;
    assert!(next.is_ok(), "{next:?}");
    assert_eq!(
        std::fs::read_to_string(root.path().join("kept.txt")).expect("kept"),
        "kept"
    );
    assert!(
        !root.path().join("dropped.txt").exists(),
        "a dropped call's write was committed"
    );
}
