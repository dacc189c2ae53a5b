//! Tool `write_file`: writes a UTF-8 file into the job's workspace.
//!
//! Input: `{"path": string, "content": string, "append"?: bool}`, the path
//! relative to the workspace; missing parent directories are created.
//! Output: `{"path", "bytes"}`. The tool writes only where its policy grants
//! read-write access; anywhere else the call is denied, naming the path.

use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::json;
use wink_guest::{Tool, ToolError, ToolSpec, workspace};

/// Largest content accepted in one call.
const MAX_CONTENT_BYTES: usize = 4 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    path: String,
    content: String,
    #[serde(default)]
    append: bool,
}

#[derive(Serialize)]
struct Output {
    path: String,
    /// Bytes written by this call.
    bytes: usize,
}

struct WriteFile;

impl Tool for WriteFile {
    type Input = Input;
    type Output = Output;

    fn spec() -> ToolSpec {
        ToolSpec::new(
            "write_file",
            "Write a UTF-8 text file in the job's workspace, replacing it (or appending to it \
             with append=true). Missing parent directories are created. Paths are relative to \
             the workspace root; only paths the policy grants read-write access to can be written.",
            json!({
                "type": "object",
                "properties": {
                    "path": {
                        "type": "string",
                        "description": "Path of the file, relative to the workspace root, e.g. \"out/summary.md\".",
                        "minLength": 1
                    },
                    "content": {
                        "type": "string",
                        "description": "The text to write.",
                        "maxLength": MAX_CONTENT_BYTES
                    },
                    "append": {
                        "type": "boolean",
                        "description": "Append to the file instead of replacing it.",
                        "default": false
                    }
                },
                "required": ["path", "content"],
                "additionalProperties": false
            }),
        )
    }

    fn invoke(input: Input) -> Result<Output, ToolError> {
        if input.content.len() > MAX_CONTENT_BYTES {
            return Err(ToolError::InvalidInput(format!(
                "content is {} bytes; at most {MAX_CONTENT_BYTES} are accepted",
                input.content.len()
            )));
        }
        let full_path = workspace::path(&input.path)?;
        write(&full_path, input.content.as_bytes(), input.append)
            .map_err(|err| workspace::io_error(&input.path, &err))?;
        Ok(Output {
            path: input.path,
            bytes: input.content.len(),
        })
    }
}

fn write(path: &Path, content: &[u8], append: bool) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .append(append)
        .truncate(!append)
        .open(path)?;
    file.write_all(content)?;
    file.flush()
}

wink_guest::export_tool!(WriteFile);
