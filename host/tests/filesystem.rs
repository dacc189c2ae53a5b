//! The guest sees its workspace and nothing else of the host filesystem.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

/// A workspace with one file, next to a secret outside it, with symlinks
/// inside that point out.
fn fixture() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    let workspace = root.path().join("ws");
    std::fs::create_dir_all(workspace.join("sub")).expect("mkdir");
    std::fs::write(workspace.join("notes.txt"), "inside").expect("write");
    std::fs::write(root.path().join("secret.txt"), "outside").expect("write");
    std::os::unix::fs::symlink(root.path().join("secret.txt"), workspace.join("abs-link")).expect("symlink");
    std::os::unix::fs::symlink("../secret.txt", workspace.join("rel-link")).expect("symlink");
    std::os::unix::fs::symlink("../../", workspace.join("sub/up")).expect("symlink");
    root
}

async fn attempt(root: &Path, input: Value) -> Value {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let env = with_workspace(env(), &root.join("ws"));
    output(run(&runtime, &agent, &input.to_string(), env).await)
}

async fn read(root: &Path, path: &str) -> Value {
    attempt(root, json!({"mode": "read", "path": path})).await
}

#[tokio::test]
async fn files_inside_the_workspace_are_readable() {
    let root = fixture();
    assert_eq!(read(root.path(), "/workspace/notes.txt").await, json!({"ok": "inside"}));
}

#[tokio::test]
async fn paths_that_leave_the_workspace_are_denied() {
    let root = fixture();
    let secret = root.path().join("secret.txt");
    for path in [
        "/workspace/../secret.txt",
        "../secret.txt",
        "/workspace/sub/../../secret.txt",
        secret.to_str().expect("utf-8 path"),
        "/etc/passwd",
        "/workspace/abs-link",
        "/workspace/rel-link",
        "/workspace/sub/up/secret.txt",
    ] {
        let result = read(root.path(), path).await;
        assert!(result.get("error").is_some(), "{path} must be denied, got {result}");
        assert_ne!(result.get("ok"), Some(&json!("outside")), "{path} leaked the secret");
    }
}

#[tokio::test]
async fn the_workspace_is_read_only_for_agents() {
    let root = fixture();
    let result = attempt(
        root.path(),
        json!({"mode": "write", "path": "/workspace/new.txt", "content": "x"}),
    )
    .await;
    assert!(result.get("error").is_some(), "write must be denied, got {result}");
    assert!(!root.path().join("ws/new.txt").exists());
}

#[tokio::test]
async fn only_the_workspace_is_preopened() {
    let root = fixture();
    let listing = attempt(root.path(), json!({"mode": "list", "path": "/"})).await;
    assert!(
        listing.get("error").is_some(),
        "the root must not be listable, got {listing}"
    );
    let listing = attempt(root.path(), json!({"mode": "list", "path": "/workspace"})).await;
    let mut names: Vec<String> = serde_json::from_value(listing["ok"].clone()).expect("names");
    names.sort();
    assert_eq!(names, ["abs-link", "notes.txt", "rel-link", "sub"]);
}
