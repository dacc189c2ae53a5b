//! Example agent: reads the files at the top of the workspace and answers a
//! question about them, letting the model call tools (such as `read_file`).
//!
//! Input: `{"question"?: string}` (default "Summarize the workspace.").
//! Output: `{"answer": string, "turns": n, "files": [string]}`.

use std::fs;
use std::io::{self, Read as _};
use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};
use wink_guest::{Agent, AgentError, Conversation, Job};

/// The host preopens the job's workspace read-only here.
const WORKSPACE: &str = "/workspace";
/// Most bytes of each file put in the prompt; the model can use a tool for more.
const EXCERPT_BYTES: u64 = 16 * 1024;
const DEFAULT_QUESTION: &str = "Summarize the workspace.";
const SYSTEM_PROMPT: &str = "You answer questions about the files of a workspace. \
    Their first 16 KiB are in the user's message; use the tools to read more when needed. \
    Answer concisely.";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    question: Option<String>,
}

/// A regular file at the top of the workspace.
struct WorkspaceFile {
    name: String,
    size: u64,
    excerpt: String,
}

struct FileDigest;

impl Agent for FileDigest {
    fn run(job: Job) -> Result<Value, AgentError> {
        let question = job
            .input_as::<Option<Input>>()?
            .and_then(|input| input.question)
            .unwrap_or_else(|| DEFAULT_QUESTION.to_owned());
        let files = read_workspace(Path::new(WORKSPACE))
            .map_err(|err| AgentError::Failed(format!("cannot read {WORKSPACE}: {err}")))?;

        let mut conversation = Conversation::new().system(SYSTEM_PROMPT);
        conversation.user(prompt(&question, &files));
        let outcome = conversation.run()?;

        let names: Vec<&str> = files.iter().map(|file| file.name.as_str()).collect();
        Ok(json!({ "answer": outcome.text, "turns": outcome.turns, "files": names }))
    }
}

/// Every regular file directly under `dir`, sorted by name.
fn read_workspace(dir: &Path) -> io::Result<Vec<WorkspaceFile>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            files.push(read_file(
                &entry.path(),
                entry.file_name().to_string_lossy().into_owned(),
            )?);
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

fn read_file(path: &Path, name: String) -> io::Result<WorkspaceFile> {
    let file = fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut bytes = Vec::new();
    file.take(EXCERPT_BYTES).read_to_end(&mut bytes)?;
    Ok(WorkspaceFile {
        name,
        size,
        excerpt: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// The user message: the question, then each file's name, size and excerpt.
fn prompt(question: &str, files: &[WorkspaceFile]) -> String {
    let listing: String = files
        .iter()
        .map(|file| format!("- {} ({} bytes)\n", file.name, file.size))
        .collect();
    let excerpts: String = files
        .iter()
        .map(|file| {
            let cut = if file.size > EXCERPT_BYTES {
                ", first 16 KiB"
            } else {
                ""
            };
            format!("\n--- {}{cut} ---\n{}\n", file.name, file.excerpt)
        })
        .collect();
    format!(
        "{question}\n\nThe workspace holds {} file(s):\n{listing}{excerpts}",
        files.len()
    )
}

wink_guest::export_agent!(FileDigest);
