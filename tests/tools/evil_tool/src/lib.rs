//! Test tool `evil_tool`: performs file operations, then misbehaves on
//! purpose, so the host's tests can check that every failure is contained
//! and that a failed call leaves the workspace untouched.
//!
//! Input: `{"ops": [op...], "then": "ok" | "error" | "trap" | "loop" | "memory" | "output"}`
//! where an op is one of `{"write": [path, content]}`, `{"remove": path}`,
//! `{"rename": [from, to]}`, `{"mkdir": path}`, `{"symlink": [target, link]}`,
//! `{"read": path}`, `{"env": name}`. Output: `{"results": [...]}`, one
//! `{"ok": value}` or `{"error": message}` per op.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};
use wink_guest::{Tool, ToolError, ToolSpec, workspace};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    ops: Vec<Op>,
    #[serde(default)]
    then: Then,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Write(String, String),
    Remove(String),
    Rename(String, String),
    Mkdir(String),
    Symlink(String, String),
    Read(String),
    Env(String),
}

#[derive(Deserialize, Default, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Then {
    #[default]
    Ok,
    Error,
    Trap,
    Loop,
    Memory,
    Output,
}

struct EvilTool;

impl Tool for EvilTool {
    type Input = Input;
    type Output = Value;

    fn spec() -> ToolSpec {
        ToolSpec::new(
            "evil_tool",
            "Test tool: file operations, then a chosen misbehaviour.",
            json!({"type": "object"}),
        )
    }

    fn invoke(input: Input) -> Result<Value, ToolError> {
        let results: Vec<Value> = input.ops.iter().map(run).collect();
        if input.then == Then::Output {
            // Larger than any sane output limit; the host must refuse it.
            return Ok(json!({ "results": results, "flood": "x".repeat(1 << 20) }));
        }
        if input.then == Then::Error {
            return Err(ToolError::Failed("failing as asked".into()));
        }
        misbehave(input.then);
        Ok(json!({ "results": results }))
    }
}

fn run(op: &Op) -> Value {
    let result = match op {
        Op::Write(path, content) => guest(path).and_then(|p| io(std::fs::write(p, content))),
        Op::Remove(path) => guest(path).and_then(|p| io(std::fs::remove_file(p))),
        Op::Rename(from, to) => guest(from).and_then(|f| guest(to).and_then(|t| io(std::fs::rename(f, t)))),
        Op::Mkdir(path) => guest(path).and_then(|p| io(std::fs::create_dir_all(p))),
        Op::Symlink(target, link) => guest(link).and_then(|l| symlink(target, &l)),
        Op::Read(path) => {
            guest(path).and_then(|p| std::fs::read_to_string(p).map(Value::from).map_err(|e| e.to_string()))
        }
        Op::Env(name) => Ok(std::env::var(name).map_or(Value::Null, Value::from)),
    };
    match result {
        Ok(value) => json!({ "ok": value }),
        Err(message) => json!({ "error": message }),
    }
}

/// Unlike the production tools, no `..` check: the host must contain it.
fn guest(path: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(workspace::WORKSPACE).join(path))
}

fn io(result: std::io::Result<()>) -> Result<Value, String> {
    result.map(|()| Value::Null).map_err(|e| e.to_string())
}

/// Create the symlink `link` -> `target` through the preopen that holds
/// `link` (the longest matching one, as libc would choose).
fn symlink(target: &str, link: &std::path::Path) -> Result<Value, String> {
    let link = link.to_str().ok_or("link path is not UTF-8")?;
    let (dir, relative) = wasip2::filesystem::preopens::get_directories()
        .into_iter()
        .filter_map(|(dir, path)| {
            let rest = link.strip_prefix(path.as_str())?.strip_prefix('/')?.to_owned();
            Some((path.len(), dir, rest))
        })
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, dir, rest)| (dir, rest))
        .ok_or_else(|| format!("{link}: under no preopened directory"))?;
    dir.symlink_at(target, &relative)
        .map(|()| Value::Null)
        .map_err(|code| format!("{code:?}"))
}

#[allow(clippy::empty_loop)]
fn misbehave(then: Then) {
    match then {
        Then::Ok | Then::Error | Then::Output => {}
        Then::Trap => std::process::abort(),
        Then::Loop => loop {},
        Then::Memory => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1; 1 << 20]);
            }
        }
    }
}

wink_guest::export_tool!(EvilTool);
