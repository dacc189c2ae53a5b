//! Tool `list_dir`: lists the workspace entries whose path matches a glob.
//!
//! Input: `{"pattern"?: glob, "dir"?: string, "max_results"?: integer}`.
//! Output: `{"entries": [{"path", "kind", "bytes"}], "truncated"}`, paths
//! relative to the workspace root, in name order, symlinks listed but never
//! followed.

use glob::{MatchOptions, Pattern};
use serde::{Deserialize, Serialize};
use serde_json::json;
use wink_guest::{Tool, ToolError, ToolSpec, workspace};

const DEFAULT_MAX_RESULTS: usize = 500;
const MAX_MAX_RESULTS: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "default_pattern")]
    pattern: String,
    #[serde(default = "default_dir")]
    dir: String,
    #[serde(default = "default_max_results")]
    max_results: usize,
}

fn default_pattern() -> String {
    "**/*".into()
}

fn default_dir() -> String {
    ".".into()
}

fn default_max_results() -> usize {
    DEFAULT_MAX_RESULTS
}

#[derive(Serialize)]
struct Listed {
    path: String,
    kind: &'static str,
    bytes: u64,
}

#[derive(Serialize)]
struct Output {
    entries: Vec<Listed>,
    /// More entries matched than `max_results`.
    truncated: bool,
}

struct ListDir;

impl Tool for ListDir {
    type Input = Input;
    type Output = Output;

    fn spec() -> ToolSpec {
        ToolSpec::new(
            "list_dir",
            "List files and directories in the job's workspace whose path matches a glob \
             (`*` within one path segment, `**` across segments, `?`, `[abc]`). Paths are \
             relative to the workspace root. Returns each entry's kind (file, dir, symlink) \
             and size, in name order.",
            json!({
                "type": "object",
                "properties": {
                    "pattern": {
                        "type": "string",
                        "description": "Glob matched against the whole relative path, e.g. \"src/**/*.rs\".",
                        "default": "**/*"
                    },
                    "dir": {
                        "type": "string",
                        "description": "Directory to list below, relative to the workspace root.",
                        "default": "."
                    },
                    "max_results": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_MAX_RESULTS,
                        "default": DEFAULT_MAX_RESULTS
                    }
                },
                "additionalProperties": false
            }),
        )
    }

    fn invoke(input: Input) -> Result<Output, ToolError> {
        if !(1..=MAX_MAX_RESULTS).contains(&input.max_results) {
            return Err(ToolError::InvalidInput(format!(
                "max_results must be between 1 and {MAX_MAX_RESULTS}"
            )));
        }
        let pattern = Pattern::new(&input.pattern)
            .map_err(|err| ToolError::InvalidInput(format!("pattern {:?}: {err}", input.pattern)))?;
        let options = MatchOptions {
            require_literal_separator: true,
            ..MatchOptions::new()
        };
        let mut entries = Vec::new();
        let mut truncated = false;
        workspace::walk(&input.dir, |entry| {
            if !pattern.matches_with(&entry.path, options) {
                return true;
            }
            if entries.len() == input.max_results {
                truncated = true;
                return false;
            }
            entries.push(Listed {
                path: entry.path.clone(),
                kind: entry.kind.as_str(),
                bytes: entry.bytes,
            });
            true
        })?;
        Ok(Output { entries, truncated })
    }
}

wink_guest::export_tool!(ListDir);
