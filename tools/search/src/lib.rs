//! Tool `search`: finds the lines of workspace files that match a regular
//! expression.
//!
//! Input: `{"pattern": regex, "dir"?: string, "glob"?: string,
//! "max_results"?: integer}`. Output: `{"matches": [{"path", "line",
//! "text"}], "files_searched", "truncated"}`. Results are bounded: at most
//! `max_results` matches, lines cut to 400 bytes, files over 1 MiB and
//! binary files skipped, so that one call cannot flood the model's context.

use std::io::{BufRead as _, BufReader};

use glob::{MatchOptions, Pattern};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use serde_json::json;
use wink_guest::workspace::{self, EntryKind};
use wink_guest::{Tool, ToolError, ToolSpec};

const DEFAULT_MAX_RESULTS: usize = 100;
const MAX_MAX_RESULTS: usize = 1_000;
const MAX_FILE_BYTES: u64 = 1 << 20;
const MAX_LINE_BYTES: usize = 400;
/// Bound on the compiled regex, against patterns that explode in size.
const MAX_REGEX_BYTES: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    pattern: String,
    #[serde(default = "default_dir")]
    dir: String,
    #[serde(default)]
    glob: Option<String>,
    #[serde(default = "default_max_results")]
    max_results: usize,
}

fn default_dir() -> String {
    ".".into()
}

fn default_max_results() -> usize {
    DEFAULT_MAX_RESULTS
}

#[derive(Serialize)]
struct Match {
    path: String,
    /// 1-based line number.
    line: usize,
    text: String,
}

#[derive(Serialize, Default)]
struct Output {
    matches: Vec<Match>,
    files_searched: usize,
    /// The search stopped at `max_results`.
    truncated: bool,
}

struct Search;

impl Tool for Search {
    type Input = Input;
    type Output = Output;

    fn spec() -> ToolSpec {
        ToolSpec::new(
            "search",
            "Search the text files of the job's workspace for lines matching a regular \
             expression (Rust regex syntax). Optionally restrict to a directory and to files \
             whose relative path matches a glob. Returns file, line number and line text; \
             files over 1 MiB and binary files are skipped, long lines are cut.",
            json!({
                "type": "object",
                "properties": {
                    "pattern": {
                        "type": "string",
                        "description": "Regular expression, e.g. \"fn\\\\s+main\" or \"(?i)todo\".",
                        "minLength": 1
                    },
                    "dir": {
                        "type": "string",
                        "description": "Directory to search below, relative to the workspace root.",
                        "default": "."
                    },
                    "glob": {
                        "type": "string",
                        "description": "Only files whose relative path matches this glob, e.g. \"**/*.md\"."
                    },
                    "max_results": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_MAX_RESULTS,
                        "default": DEFAULT_MAX_RESULTS
                    }
                },
                "required": ["pattern"],
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
        let regex = RegexBuilder::new(&input.pattern)
            .size_limit(MAX_REGEX_BYTES)
            .build()
            .map_err(|err| ToolError::InvalidInput(format!("pattern: {err}")))?;
        let filter = input
            .glob
            .as_deref()
            .map(Pattern::new)
            .transpose()
            .map_err(|err| ToolError::InvalidInput(format!("glob: {err}")))?;
        let options = MatchOptions {
            require_literal_separator: true,
            ..MatchOptions::new()
        };
        let mut output = Output::default();
        workspace::walk(&input.dir, |entry| {
            let wanted = entry.kind == EntryKind::File
                && entry.bytes <= MAX_FILE_BYTES
                && filter.as_ref().is_none_or(|g| g.matches_with(&entry.path, options));
            if wanted {
                output.files_searched += 1;
                search_file(&regex, &entry.path, input.max_results, &mut output);
            }
            !output.truncated
        })?;
        Ok(output)
    }
}

/// Append the matches of one file; a file that cannot be read or is not
/// text is skipped.
fn search_file(regex: &Regex, path: &str, max_results: usize, output: &mut Output) {
    let Ok(file) =
        workspace::path(path).and_then(|p| std::fs::File::open(p).map_err(|e| workspace::io_error(path, &e)))
    else {
        return;
    };
    for (index, line) in BufReader::new(file).split(b'\n').enumerate() {
        let Ok(line) = line else { return };
        if line.contains(&0) {
            return; // binary
        }
        let text = String::from_utf8_lossy(&line);
        if !regex.is_match(&text) {
            continue;
        }
        if output.matches.len() == max_results {
            output.truncated = true;
            return;
        }
        output.matches.push(Match {
            path: path.to_owned(),
            line: index + 1,
            text: cut(&text, MAX_LINE_BYTES),
        });
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim_end_matches('\r').to_owned()
}

wink_guest::export_tool!(Search);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_on_character_boundaries() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("abc\r", 10), "abc");
    }
}
