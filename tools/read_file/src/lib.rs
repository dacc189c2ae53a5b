//! Tool `read_file`: reads a file of the job's workspace as UTF-8 text.
//!
//! Input: `{"path": string, "max_bytes"?: integer}`, the path relative to the
//! workspace. Output: `{"path", "content", "bytes", "truncated"}`.

use std::fs::File;
use std::io::{self, Read as _};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::json;
use wink_guest::{Tool, ToolError, ToolSpec, workspace};

const DEFAULT_MAX_BYTES: u64 = 64 * 1024;
const MAX_MAX_BYTES: u64 = 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    path: String,
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
}

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}

#[derive(Serialize)]
struct Output {
    path: String,
    content: String,
    /// Size of the whole file.
    bytes: u64,
    truncated: bool,
}

struct ReadFile;

impl Tool for ReadFile {
    type Input = Input;
    type Output = Output;

    fn spec() -> ToolSpec {
        ToolSpec::new(
            "read_file",
            "Read a text file from the job's workspace. Returns its content as UTF-8 \
             (invalid bytes replaced), its total size in bytes, and whether the content \
             was truncated to max_bytes. Paths are relative to the workspace root.",
            json!({
                "type": "object",
                "properties": {
                    "path": {
                        "type": "string",
                        "description": "Path of the file, relative to the workspace root, e.g. \"notes.txt\" or \"src/main.rs\".",
                        "minLength": 1
                    },
                    "max_bytes": {
                        "type": "integer",
                        "description": "Most bytes of content to return.",
                        "minimum": 1,
                        "maximum": MAX_MAX_BYTES,
                        "default": DEFAULT_MAX_BYTES
                    }
                },
                "required": ["path"],
                "additionalProperties": false
            }),
        )
    }

    fn invoke(input: Input) -> Result<Output, ToolError> {
        if !(1..=MAX_MAX_BYTES).contains(&input.max_bytes) {
            return Err(ToolError::InvalidInput(format!(
                "max_bytes must be between 1 and {MAX_MAX_BYTES}"
            )));
        }
        let full_path = workspace::path(&input.path)?;
        let (content, bytes) =
            read_prefix(&full_path, input.max_bytes).map_err(|err| workspace::io_error(&input.path, &err))?;
        let truncated = bytes > content.len() as u64;
        Ok(Output {
            path: input.path,
            content: utf8_lossy(content),
            bytes,
            truncated,
        })
    }
}

/// The first `max_bytes` bytes of a regular file, and the file's total size.
fn read_prefix(path: &Path, max_bytes: u64) -> io::Result<(Vec<u8>, u64)> {
    let file = File::open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    // Sized from the file's length, the buffer takes one read plus one to see
    // the end, instead of a read per doubling of a buffer grown from empty;
    // each read is a round trip through the host. The length is only a hint:
    // a file that grew meanwhile is still read up to `max_bytes`.
    let expected = metadata.len().min(max_bytes);
    let mut content = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    file.take(max_bytes).read_to_end(&mut content)?;
    Ok((content, metadata.len()))
}

/// Decodes UTF-8, replacing invalid bytes. An incomplete character at the end,
/// typically cut by truncation, is dropped rather than shown as U+FFFD.
fn utf8_lossy(mut bytes: Vec<u8>) -> String {
    if let Err(err) = std::str::from_utf8(&bytes)
        && err.error_len().is_none()
    {
        bytes.truncate(err.valid_up_to());
    }
    String::from_utf8(bytes).unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
}

wink_guest::export_tool!(ReadFile);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_characters_are_dropped() {
        let mut bytes = "héllo".as_bytes().to_vec();
        bytes.truncate(2);
        assert_eq!(utf8_lossy(bytes), "h");
        assert_eq!(utf8_lossy(b"a\xffb".to_vec()), "a\u{fffd}b");
    }
}
