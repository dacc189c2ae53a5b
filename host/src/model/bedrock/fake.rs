//! A fake Bedrock Runtime server for tests and benchmarks (feature `fake-bedrock`).
//!
//! It speaks the real wire format on 127.0.0.1 so that the real
//! `aws-sdk-bedrockruntime` client can be pointed at it through
//! `endpoint_url`: `POST /model/{url-encoded id}/converse` answers JSON, and
//! `/converse-stream` answers `application/vnd.amazon.eventstream` frames.
//! Each request consumes the next scripted [`Step`]; once the queue is empty
//! the default reply is served. Nothing leaves the machine.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// An SDK configuration with static test credentials and region `us-east-1`,
/// for pointing a real client at the fake.
pub fn sdk_config(access_key_id: &str, secret_access_key: &str) -> aws_config::SdkConfig {
    let credentials = aws_credential_types::Credentials::new(access_key_id, secret_access_key, None, None, "test");
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(
            credentials,
        ))
        .build()
}

/// One block of a fake assistant message.
#[derive(Debug, Clone)]
pub enum FakeBlock {
    /// Text, streamed in deltas of at most `chunk` bytes.
    Text(String),
    /// A tool request with a JSON input.
    ToolUse {
        /// The tool-use id.
        id: String,
        /// The tool name.
        name: String,
        /// The tool input.
        input: Value,
    },
    /// A tool request cut off while its input streamed, as `max_tokens`
    /// cuts one: ConverseStream sends `partial_input` as it is (not valid
    /// JSON); Converse sends an empty input.
    CutToolUse {
        /// The tool-use id.
        id: String,
        /// The tool name.
        name: String,
        /// The start of the input's JSON.
        partial_input: String,
    },
}

/// A successful fake model answer.
#[derive(Debug, Clone)]
pub struct FakeReply {
    /// The assistant message content.
    pub content: Vec<FakeBlock>,
    /// Bedrock's stop reason (`end_turn`, `tool_use`, ...).
    pub stop_reason: String,
    /// Reported prompt tokens.
    pub input_tokens: u32,
    /// Reported generated tokens.
    pub output_tokens: u32,
}

impl FakeReply {
    /// A text answer that ends the turn.
    pub fn text(text: &str, input_tokens: u32, output_tokens: u32) -> Self {
        Self {
            content: vec![FakeBlock::Text(text.to_owned())],
            stop_reason: "end_turn".into(),
            input_tokens,
            output_tokens,
        }
    }

    /// A tool request (stop reason `tool_use`).
    pub fn tool_use(id: &str, name: &str, input: Value) -> Self {
        Self {
            content: vec![FakeBlock::ToolUse {
                id: id.into(),
                name: name.into(),
                input,
            }],
            stop_reason: "tool_use".into(),
            input_tokens: 10,
            output_tokens: 5,
        }
    }
}

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Step {
    /// Answer normally.
    Reply(FakeReply),
    /// HTTP 429 `ThrottlingException`.
    Throttle,
    /// An HTTP 5xx with this status (500 `InternalServerException`, else `ServiceUnavailableException`).
    ServerError(u16),
    /// This HTTP status without Bedrock's error type, as a proxy or load
    /// balancer in front of it answers.
    Unlabelled(u16),
    /// Wait, then do the inner step.
    Slow(Duration, Box<Step>),
    /// Stream: start the message, send the first text delta, then a
    /// `modelStreamErrorException` frame. Converse (non-stream): a 500.
    MidStreamError,
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The decoded model id from the path.
    pub model_id: String,
    /// Whether it was `/converse-stream`.
    pub stream: bool,
    /// The JSON body.
    pub body: Value,
    /// Request headers, names lower-cased.
    pub headers: Vec<(String, String)>,
}

#[derive(Debug)]
struct State {
    steps: VecDeque<Step>,
    default: Step,
    requests: Vec<Recorded>,
}

/// A running fake server; it stops when dropped.
#[derive(Debug)]
pub struct FakeBedrock {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeBedrock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeBedrock {
    /// Listen on an ephemeral loopback port; every request answers `default`
    /// unless a step is queued.
    pub async fn start(default: FakeReply) -> std::io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            steps: VecDeque::new(),
            default: Step::Reply(default),
            requests: Vec::new(),
        }));
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(Self { addr, state, task })
    }

    /// The `endpoint_url` to give the SDK.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queue steps, served in order before the default.
    pub fn push(&self, steps: impl IntoIterator<Item = Step>) {
        lock(&self.state).steps.extend(steps);
    }

    /// Replace the default step.
    pub fn set_default(&self, step: Step) {
        lock(&self.state).default = step;
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        lock(&self.state).requests.len()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking test thread must not hide the recorded requests from the others.
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(serve_connection(stream, state.clone()));
    }
}

struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// HTTP/1.1 with keep-alive: requests on one connection are served in turn.
async fn serve_connection(stream: TcpStream, state: Arc<Mutex<State>>) {
    let _ = stream.set_nodelay(true);
    let mut stream = BufReader::new(stream);
    while let Ok(Some(request)) = read_request(&mut stream).await {
        if respond(&mut stream, request, &state).await.is_err() {
            return;
        }
    }
}

async fn read_request(stream: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if stream.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let path = line.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        stream.read_line(&mut line).await?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok(Some(Request { path, headers, body }))
}

async fn respond(stream: &mut BufReader<TcpStream>, request: Request, state: &Mutex<State>) -> std::io::Result<()> {
    let Some((model_id, stream_call)) = parse_path(&request.path) else {
        return write_error(stream, 404, "UnknownOperationException", "no such route").await;
    };
    let step = {
        let mut state = lock(state);
        state.requests.push(Recorded {
            model_id,
            stream: stream_call,
            body: serde_json::from_slice(&request.body).unwrap_or(Value::Null),
            headers: request.headers,
        });
        let default = state.default.clone();
        state.steps.pop_front().unwrap_or(default)
    };
    serve_step(stream, step, stream_call).await
}

async fn serve_step(stream: &mut BufReader<TcpStream>, mut step: Step, stream_call: bool) -> std::io::Result<()> {
    while let Step::Slow(delay, inner) = step {
        tokio::time::sleep(delay).await;
        step = *inner;
    }
    match step {
        Step::Reply(reply) if stream_call => write_stream(stream, &stream_events(&reply), None).await,
        Step::Reply(reply) => write_json(stream, 200, &[], &converse_body(&reply)).await,
        Step::Throttle => write_error(stream, 429, "ThrottlingException", "Too many requests, please wait.").await,
        Step::ServerError(500) => write_error(stream, 500, "InternalServerException", "internal failure").await,
        Step::ServerError(status) => write_error(stream, status, "ServiceUnavailableException", "unavailable").await,
        Step::Unlabelled(status) => write_json(stream, status, &[], &json!({ "message": "upstream failure" })).await,
        Step::MidStreamError if stream_call => {
            let events = stream_events(&FakeReply::text("partial answer", 1, 1));
            write_stream(stream, &events[..2], Some("the model stream broke")).await
        }
        Step::MidStreamError => write_error(stream, 500, "InternalServerException", "internal failure").await,
        Step::Slow(..) => unreachable!("unwrapped above"),
    }
}

/// `/model/{id}/converse` or `/model/{id}/converse-stream`, id percent-decoded.
fn parse_path(path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix("/model/")?;
    let (id, operation) = rest.rsplit_once('/')?;
    let stream = match operation {
        "converse" => false,
        "converse-stream" => true,
        _ => return None,
    };
    Some((percent_decode(id), stream))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn wire_block(block: &FakeBlock) -> Value {
    match block {
        FakeBlock::Text(text) => json!({ "text": text }),
        FakeBlock::ToolUse { id, name, input } => {
            json!({ "toolUse": { "toolUseId": id, "name": name, "input": input } })
        }
        FakeBlock::CutToolUse { id, name, .. } => {
            json!({ "toolUse": { "toolUseId": id, "name": name, "input": {} } })
        }
    }
}

fn wire_usage(reply: &FakeReply) -> Value {
    json!({
        "inputTokens": reply.input_tokens,
        "outputTokens": reply.output_tokens,
        "totalTokens": reply.input_tokens + reply.output_tokens,
    })
}

fn converse_body(reply: &FakeReply) -> Value {
    json!({
        "output": { "message": { "role": "assistant", "content": reply.content.iter().map(wire_block).collect::<Vec<_>>() } },
        "stopReason": reply.stop_reason,
        "usage": wire_usage(reply),
        "metrics": { "latencyMs": 1 },
    })
}

/// The ConverseStream events for a reply: text arrives in two deltas, tool
/// input JSON in two partial-JSON deltas, as Bedrock splits them.
fn stream_events(reply: &FakeReply) -> Vec<(&'static str, Value)> {
    let mut events = vec![("messageStart", json!({ "role": "assistant" }))];
    for (index, block) in reply.content.iter().enumerate() {
        match block {
            FakeBlock::Text(text) => {
                let (a, b) = text.split_at(text.floor_char_boundary(text.len() / 2));
                for part in [a, b] {
                    events.push((
                        "contentBlockDelta",
                        json!({ "contentBlockIndex": index, "delta": { "text": part } }),
                    ));
                }
            }
            FakeBlock::ToolUse { id, name, input } => push_tool_use(&mut events, index, id, name, &input.to_string()),
            FakeBlock::CutToolUse {
                id,
                name,
                partial_input,
            } => push_tool_use(&mut events, index, id, name, partial_input),
        }
        events.push(("contentBlockStop", json!({ "contentBlockIndex": index })));
    }
    events.push(("messageStop", json!({ "stopReason": reply.stop_reason })));
    events.push((
        "metadata",
        json!({ "usage": wire_usage(reply), "metrics": { "latencyMs": 1 } }),
    ));
    events
}

/// The events of a tool request whose input JSON (whole or not) arrives in
/// two deltas.
fn push_tool_use(events: &mut Vec<(&'static str, Value)>, index: usize, id: &str, name: &str, input: &str) {
    events.push((
        "contentBlockStart",
        json!({ "contentBlockIndex": index, "start": { "toolUse": { "toolUseId": id, "name": name } } }),
    ));
    let (a, b) = input.split_at(input.floor_char_boundary(input.len() / 2));
    for part in [a, b] {
        events.push((
            "contentBlockDelta",
            json!({ "contentBlockIndex": index, "delta": { "toolUse": { "input": part } } }),
        ));
    }
}

fn frame(headers: [(&'static str, &str); 3], payload: &Value) -> Vec<u8> {
    let message = headers
        .into_iter()
        .fold(Message::new(payload.to_string()), |m, (name, value)| {
            m.add_header(Header::new(name, HeaderValue::String(value.to_owned().into())))
        });
    let mut buffer = Vec::new();
    // Writing to a Vec only fails for frames over the 16 MiB limit, which
    // the fake never builds.
    write_message_to(&message, &mut buffer).expect("event stream frame");
    buffer
}

fn event_frame(event_type: &str, payload: &Value) -> Vec<u8> {
    frame(
        [
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload,
    )
}

fn exception_frame(message: &str) -> Vec<u8> {
    frame(
        [
            (":exception-type", "modelStreamErrorException"),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        &json!({ "message": message, "originalStatusCode": 500 }),
    )
}

async fn write_stream(
    stream: &mut BufReader<TcpStream>,
    events: &[(&'static str, Value)],
    exception: Option<&str>,
) -> std::io::Result<()> {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.amazon.eventstream\r\n\
                x-amzn-requestid: fake\r\ntransfer-encoding: chunked\r\n\r\n";
    let stream = stream.get_mut();
    stream.write_all(head.as_bytes()).await?;
    let frames = events
        .iter()
        .map(|(event_type, payload)| event_frame(event_type, payload))
        .chain(exception.map(exception_frame));
    for frame in frames {
        stream.write_all(format!("{:x}\r\n", frame.len()).as_bytes()).await?;
        stream.write_all(&frame).await?;
        stream.write_all(b"\r\n").await?;
    }
    stream.write_all(b"0\r\n\r\n").await?;
    stream.flush().await
}

async fn write_error(stream: &mut BufReader<TcpStream>, status: u16, kind: &str, message: &str) -> std::io::Result<()> {
    write_json(
        stream,
        status,
        &[("x-amzn-errortype", kind)],
        &json!({ "message": message }),
    )
    .await
}

async fn write_json(
    stream: &mut BufReader<TcpStream>,
    status: u16,
    headers: &[(&str, &str)],
    body: &Value,
) -> std::io::Result<()> {
    let body = body.to_string();
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\nx-amzn-requestid: fake\r\ncontent-length: {}\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let stream = stream.get_mut();
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Service Unavailable",
    }
}
