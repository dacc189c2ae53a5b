//! Test agent that misbehaves on purpose, for the host's sandbox tests.
//!
//! Input `{"mode": string, ...}`, with the mode's parameters in the same
//! object; see [`Adversary::run`] for the modes. The file system and network
//! modes report failures in their output instead of failing the job, so tests
//! can assert on the exact error.

use std::hint::black_box;
use std::io::{self, Write as _};
use std::{env, fs};

use serde::Deserialize;
use serde_json::{Value, json};
use wink_guest::model::{self, ConverseRequest, Message};
use wink_guest::{Agent, AgentError, Job, session, tools};

mod net;

const MIB: usize = 1024 * 1024;
/// Writing one byte per (host) page makes the host commit the whole chunk.
const PAGE: usize = 4 * 1024;

struct Adversary;

impl Agent for Adversary {
    /// Modes: `spin`, `alloc`, `recurse`, `trap` never return; `read`, `write`,
    /// `list`, `env`, `net`, `output`, `stdout`, `model`, `models`, `tool`,
    /// `session` and `echo` probe one capability each; `log` floods the
    /// host with log records.
    fn run(job: Job) -> Result<Value, AgentError> {
        let Some(mode) = job.input.get("mode").and_then(Value::as_str) else {
            return Err(AgentError::InvalidInput("expected a string field `mode`".into()));
        };
        match mode {
            "spin" => spin(),
            "alloc" => alloc(),
            "recurse" => Ok(json!({ "depth": recurse(0) })),
            "trap" => panic!("adversary trap"),
            "read" => Ok(read(job.input_as()?)),
            "write" => Ok(write(job.input_as()?)),
            "list" => Ok(list(job.input_as()?)),
            "env" => Ok(environment()),
            "net" => Ok(connect(job.input_as()?)),
            "output" => Ok(output(job.input_as()?)),
            "stdout" => Ok(print(job.input_as()?)),
            "model" => Ok(converse(job.input_as()?)),
            "models" => Ok(converse_many(job.input_as()?)),
            "tool" => Ok(call_tool(job.input_as()?)),
            "session" => round_trip_session(job.input_as()?),
            "echo" => Ok(job.input),
            "log" => Ok(flood_log(job.input_as()?)),
            _ => Err(AgentError::InvalidInput(format!("unknown mode `{mode}`"))),
        }
    }
}

/// `{"ok": value}` or `{"error": message}`.
fn outcome<T: Into<Value>, E: ToString>(result: Result<T, E>) -> Value {
    match result {
        Ok(value) => json!({ "ok": value.into() }),
        Err(err) => json!({ "error": err.to_string() }),
    }
}

/// Burns CPU until the host's fuel or epoch deadline stops it.
fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter).wrapping_add(1);
    }
}

/// Commits memory 1 MiB at a time until an allocation fails and aborts.
fn alloc() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; MIB];
        for page in chunk.iter_mut().step_by(PAGE) {
            *page = 1;
        }
        chunks.push(black_box(chunk));
    }
}

/// Recurses until the stack overflows; the work after the call prevents
/// tail-call elimination, `black_box` prevents folding.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 16]);
    // Never true at runtime, but the compiler cannot prove it: keeps the
    // `unconditional_recursion` lint quiet without a real base case.
    if black_box(depth) == u64::MAX {
        return depth;
    }
    let below = recurse(depth + 1);
    black_box(below.wrapping_add(frame[(depth % 16) as usize]))
}

#[derive(Deserialize)]
struct PathParams {
    path: String,
}

fn read(params: PathParams) -> Value {
    outcome(fs::read_to_string(params.path))
}

#[derive(Deserialize)]
struct WriteParams {
    path: String,
    content: String,
}

fn write(params: WriteParams) -> Value {
    outcome(fs::write(params.path, params.content).map(|()| true))
}

fn list(params: PathParams) -> Value {
    let names = fs::read_dir(params.path).and_then(|entries| {
        entries
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<Vec<String>>>()
    });
    outcome(names)
}

fn environment() -> Value {
    let vars: Vec<String> = env::vars().map(|(key, value)| format!("{key}={value}")).collect();
    let args: Vec<String> = env::args().collect();
    json!({ "env": vars, "args": args })
}

#[derive(Deserialize)]
struct NetParams {
    addr: String,
}

fn connect(params: NetParams) -> Value {
    outcome(net::connect(&params.addr).map(|()| true))
}

#[derive(Deserialize)]
struct SizeParams {
    bytes: usize,
}

#[derive(Deserialize)]
struct LogParams {
    records: usize,
    bytes: usize,
}

/// `records` log records, each with a message and a field of `bytes` bytes.
fn flood_log(params: LogParams) -> Value {
    let message = "m".repeat(params.bytes);
    let field = "f".repeat(params.bytes);
    for _ in 0..params.records {
        wink_guest::log::emit(wink_guest::log::Level::Info, &message, &[("field", &field)]);
    }
    json!({ "ok": true })
}

fn output(params: SizeParams) -> Value {
    json!({ "data": "x".repeat(params.bytes) })
}

fn print(params: SizeParams) -> Value {
    let bytes = vec![b'y'; params.bytes];
    // The host may cap or close the streams; that is what is under test, so
    // write errors are ignored rather than turned into a panic.
    let _ = io::stdout().write_all(&bytes).and_then(|()| io::stdout().flush());
    let _ = io::stderr().write_all(&bytes);
    json!({ "ok": true })
}

#[derive(Deserialize)]
struct ModelParams {
    #[serde(default = "default_prompt")]
    prompt: String,
}

fn default_prompt() -> String {
    "hi".to_owned()
}

fn converse(params: ModelParams) -> Value {
    let request = ConverseRequest::new(vec![Message::user(params.prompt)]);
    match model::converse(&request) {
        Ok(response) => json!({ "text": response.message.text() }),
        Err(err) => json!({ "error": format!("{err:?}") }),
    }
}

#[derive(Deserialize)]
struct ManyParams {
    count: u32,
    #[serde(default = "default_prompt")]
    prompt: String,
    model: Option<String>,
    max_tokens: Option<u32>,
}

/// Up to `count` model calls, stopping at the first error. Output:
/// `{"texts": [..], "error"?: "<model error>", "max_tokens_seen": [..], "budget": {..}}`
/// where `budget` is what `budget()` reports at the end.
fn converse_many(params: ManyParams) -> Value {
    let mut texts = Vec::new();
    let mut error = Value::Null;
    for _ in 0..params.count {
        let mut request = ConverseRequest::new(vec![Message::user(params.prompt.clone())]);
        request.model = params.model.clone();
        request.config.max_tokens = params.max_tokens;
        match model::converse(&request) {
            Ok(response) => texts.push(response.message.text()),
            Err(err) => {
                error = json!(format!("{err:?}"));
                break;
            }
        }
    }
    let left = model::budget();
    json!({
        "texts": texts,
        "error": error,
        "budget": {
            "input_tokens": left.input_tokens,
            "output_tokens": left.output_tokens,
            "total_tokens": left.total_tokens,
            "micro_usd": left.micro_usd,
            "turns": left.turns,
            "deadline_ms": left.deadline_ms,
        },
    })
}

#[derive(Deserialize)]
struct ToolParams {
    name: String,
    #[serde(default)]
    input: Value,
}

fn call_tool(params: ToolParams) -> Value {
    outcome(tools::call(&params.name, &params.input))
}

#[derive(Deserialize)]
struct SessionParams {
    value: String,
}

/// Stores the raw UTF-8 bytes (not JSON) so tests can check the store directly.
fn round_trip_session(params: SessionParams) -> Result<Value, AgentError> {
    session::set("k", params.value.as_bytes())?;
    session::checkpoint()?;
    let value = session::get("k").map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    Ok(json!({ "value": value }))
}

wink_guest::export_agent!(Adversary);
