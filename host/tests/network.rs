//! The `http_fetch` tool against a real HTTP server on 127.0.0.1: what the
//! tool's network allowlist admits goes through, everything else is denied
//! by the host before any connection, naming the URL and the reason.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::logs::captured_logs;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use wink_host::bindings::types::ToolError;
use wink_host::policy::Policy;
use wink_host::runtime::{Limits, Runtime};
use wink_host::tools::{ToolCallContext, ToolSet};

/// One request the test server received.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: String,
    path: String,
    body: String,
}

/// A small HTTP/1.1 server on 127.0.0.1 that answers by path and records
/// every request it receives, so tests can prove a denied request never
/// reached it.
struct TestServer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, port, log.clone()));
            }
        });
        Self { port, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn paths(&self) -> Vec<String> {
        self.seen.lock().expect("lock").iter().map(|s| s.path.clone()).collect()
    }
}

/// Serves one request, then closes the connection.
async fn serve(stream: TcpStream, port: u16, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).await.is_err() {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.trim_end().split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).await.is_err() {
        return;
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    seen.lock().expect("lock").push(Seen {
        method: method.clone(),
        path: path.clone(),
        body: body.clone(),
    });
    let (status, extra, content) = match path.as_str() {
        "/api/hello" => (
            "200 OK",
            "x-test: yes\r\n".to_owned(),
            "hello from the test server".to_owned(),
        ),
        "/api/echo" => {
            let echo = header("x-echo").unwrap_or_default();
            ("200 OK", String::new(), format!("{method} {echo} {body}"))
        }
        "/api/big" => ("200 OK", String::new(), "0123456789".repeat(10_000)),
        "/api/redirect-ok" => ("302 Found", "location: /api/hello\r\n".to_owned(), String::new()),
        "/api/redirect-away" => (
            "302 Found",
            format!("location: http://localhost:{port}/api/hello\r\n"),
            String::new(),
        ),
        "/admin" => ("200 OK", String::new(), "the admin page".to_owned()),
        "/api/slow" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            ("200 OK", String::new(), "too late".to_owned())
        }
        _ => ("404 Not Found", String::new(), "not found".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{content}",
        content.len()
    );
    let mut stream = reader.into_inner();
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// `http_fetch` allowed `urls`, with a call timeout of `timeout`.
async fn tool_allowing(runtime: &Runtime, urls: &[String], timeout: &str) -> ToolSet {
    let network: Vec<String> = urls.iter().map(|u| format!("{{ url = \"{u}\" }}")).collect();
    let text = format!(
        "[agents.tester]\ntools = [\"http_fetch\"]\n[tools.http_fetch]\nnetwork = [{}]\nlimits = {{ timeout = \"{timeout}\" }}\n",
        network.join(", ")
    );
    let policy = Policy::parse(&text, "test")
        .and_then(|p| p.for_agent("tester", &Limits::default()))
        .expect("policy");
    let tool = runtime
        .load_tool(&guest("http_fetch"), Limits::default())
        .await
        .expect("http_fetch");
    ToolSet::granted(runtime, [tool], &policy).expect("tool set")
}

/// `http_fetch` granted the test server's `/api/` over http, and an https
/// prefix on `other_port`.
async fn fetch_tool(runtime: &Runtime, port: u16, other_port: u16) -> ToolSet {
    let urls = [
        format!("http://127.0.0.1:{port}/api/"),
        format!("https://127.0.0.1:{other_port}/secure/"),
    ];
    tool_allowing(runtime, &urls, "20s").await
}

fn context() -> ToolCallContext {
    ToolCallContext {
        workspace: None,
        deadline: Instant::now() + Duration::from_secs(60),
        span: tracing::Span::none(),
    }
}

async fn fetch(runtime: &Runtime, tools: &ToolSet, input: Value) -> Result<Value, ToolError> {
    let output = tools.call(runtime, "http_fetch", input.to_string(), &context()).await?;
    Ok(serde_json::from_str(&output).expect("tool output is JSON"))
}

fn denial(result: Result<Value, ToolError>) -> String {
    match result {
        Err(ToolError::Denied(message)) => message,
        other => panic!("expected a denial, got {other:?}"),
    }
}

/// A listener nothing should ever connect to, and a check that nothing did.
struct Untouched(TcpListener);

impl Untouched {
    async fn bind() -> Self {
        Self(TcpListener::bind("127.0.0.1:0").await.expect("bind"))
    }

    fn port(&self) -> u16 {
        self.0.local_addr().expect("addr").port()
    }

    async fn assert_untouched(&self) {
        let accepted = tokio::time::timeout(Duration::from_millis(100), self.0.accept()).await;
        assert!(accepted.is_err(), "a denied request connected to port {}", self.port());
    }
}

#[tokio::test]
async fn allowed_requests_go_through_with_status_headers_and_bounded_body() {
    let runtime = runtime();
    let server = TestServer::start().await;
    let other = Untouched::bind().await;
    let tools = fetch_tool(&runtime, server.port, other.port()).await;

    let got = fetch(&runtime, &tools, json!({"url": server.url("/api/hello")}))
        .await
        .expect("GET");
    assert_eq!(got["status"], json!(200));
    assert_eq!(got["body"], json!("hello from the test server"));
    assert_eq!(got["headers"]["x-test"], json!("yes"));
    assert_eq!(got["truncated"], json!(false));

    let posted = fetch(
        &runtime,
        &tools,
        json!({"url": server.url("/api/echo"), "method": "POST", "headers": {"x-echo": "hi"}, "body": "payload"}),
    )
    .await
    .expect("POST");
    assert_eq!(posted["body"], json!("POST hi payload"));

    let big = fetch(
        &runtime,
        &tools,
        json!({"url": server.url("/api/big"), "max_bytes": 1000}),
    )
    .await
    .expect("big");
    assert_eq!(
        (big["bytes"].clone(), big["truncated"].clone()),
        (json!(1000), json!(true))
    );
    assert_eq!(big["body"].as_str().map(str::len), Some(1000));

    // A redirect inside the allowlist is followed, as a fresh checked request.
    let redirected = fetch(&runtime, &tools, json!({"url": server.url("/api/redirect-ok")}))
        .await
        .expect("redirect");
    assert_eq!(redirected["body"], json!("hello from the test server"));
    assert_eq!(redirected["redirects"], json!([server.url("/api/hello")]));
    let not_followed = fetch(
        &runtime,
        &tools,
        json!({"url": server.url("/api/redirect-ok"), "max_redirects": 0}),
    )
    .await
    .expect("redirect response");
    assert_eq!(not_followed["status"], json!(302));

    assert_eq!(
        server.paths(),
        [
            "/api/hello",
            "/api/echo",
            "/api/big",
            "/api/redirect-ok",
            "/api/hello",
            "/api/redirect-ok"
        ]
    );
    assert_eq!(server.seen.lock().expect("lock")[1].method, "POST");
    assert_eq!(server.seen.lock().expect("lock")[1].body, "payload");
    other.assert_untouched().await;
}

#[tokio::test]
async fn requests_outside_the_allowlist_are_denied_before_connecting_naming_url_and_reason() {
    let runtime = runtime();
    let server = TestServer::start().await;
    let other = Untouched::bind().await;
    let (port, other_port) = (server.port, other.port());
    let tools = fetch_tool(&runtime, port, other_port).await;

    let cases = [
        // Other port (a live listener: it must see no connection).
        (
            format!("http://127.0.0.1:{other_port}/api/hello"),
            format!("no allowlist entry matches (port {other_port} is not {port} as in http://127.0.0.1:{port}/api/)"),
        ),
        // Other path prefix, on the allowed server.
        (
            server.url("/admin"),
            format!(
                "no allowlist entry matches (path /admin does not start with /api/ as in http://127.0.0.1:{port}/api/)"
            ),
        ),
        // Other scheme: the rule for that port is https.
        (
            format!("http://127.0.0.1:{other_port}/secure/x"),
            format!(
                "no allowlist entry matches (scheme http is not https as in https://127.0.0.1:{other_port}/secure/)"
            ),
        ),
        // Private IP literals: denied without connecting (neither exists here).
        (
            "http://10.0.0.1/".to_owned(),
            "10.0.0.1 is a private, loopback or link-local address and no allowlist entry names it".to_owned(),
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "169.254.169.254 is a private, loopback or link-local address and no allowlist entry names it".to_owned(),
        ),
        (
            "http://example.invalid/".to_owned(),
            "host example.invalid is not in the tool's network allowlist".to_owned(),
        ),
    ];
    for (url, reason) in cases {
        let message = denial(fetch(&runtime, &tools, json!({"url": url})).await);
        assert_eq!(message, format!("network request to {url} denied: {reason}"));
    }
    assert!(
        server.paths().is_empty(),
        "denied requests reached the server: {:?}",
        server.paths()
    );
    other.assert_untouched().await;
}

#[tokio::test]
async fn an_https_rule_does_not_admit_plain_http() {
    let runtime = runtime();
    let server = TestServer::start().await;
    // Only rule: https on the server's own port.
    let tools = tool_allowing(&runtime, &[format!("https://127.0.0.1:{}/api/", server.port)], "20s").await;
    let url = server.url("/api/hello");
    let message = denial(fetch(&runtime, &tools, json!({"url": url})).await);
    assert_eq!(
        message,
        format!(
            "network request to {url} denied: no allowlist entry matches (scheme http is not https as in https://127.0.0.1:{}/api/)",
            server.port
        )
    );
    assert!(server.paths().is_empty());
}

#[tokio::test]
async fn a_redirect_to_a_host_outside_the_allowlist_is_denied_at_that_hop() {
    let runtime = runtime();
    let server = TestServer::start().await;
    let other = Untouched::bind().await;
    let tools = fetch_tool(&runtime, server.port, other.port()).await;
    let message = denial(fetch(&runtime, &tools, json!({"url": server.url("/api/redirect-away")})).await);
    assert_eq!(
        message,
        format!(
            "network request to http://localhost:{}/api/hello denied: host localhost is not in the tool's network allowlist",
            server.port
        )
    );
    // localhost is this very server: the denied hop never reached it.
    assert_eq!(server.paths(), ["/api/redirect-away"]);
}

#[tokio::test]
async fn without_a_policy_a_tool_has_no_network() {
    let runtime = runtime();
    let server = TestServer::start().await;
    let tool = runtime
        .load_tool(&guest("http_fetch"), Limits::default())
        .await
        .expect("http_fetch");
    let tools = ToolSet::new([tool]).expect("tool set");
    let url = server.url("/api/hello");
    let message = denial(fetch(&runtime, &tools, json!({"url": url})).await);
    assert_eq!(
        message,
        format!("network request to {url} denied: the tool's policy grants no network access")
    );
    assert!(server.paths().is_empty());
}

#[tokio::test]
async fn agents_get_no_wasi_http() {
    // http_fetch imports wasi:http; the agent linker must not provide it.
    let runtime = runtime();
    let err = runtime
        .load_agent(&guest("http_fetch"))
        .await
        .expect_err("an agent importing wasi:http must not instantiate")
        .to_string();
    assert!(err.contains("wasi:http/"), "{err}");
}

#[tokio::test]
async fn an_agent_sees_the_denial_as_a_tool_error_and_it_is_logged_with_the_job_ids() {
    let logs = captured_logs();
    let runtime = runtime();
    let server = TestServer::start().await;
    let other = Untouched::bind().await;
    let agent = load(&runtime, "adversary").await;
    let mut env = env();
    env.tools = Arc::new(fetch_tool(&runtime, server.port, other.port()).await);
    let input = json!({"mode": "tool", "name": "http_fetch", "input": {"url": "http://169.254.169.254/"}});
    let report = runtime
        .run_agent(
            &agent,
            wink_host::job::JobRequest::new("req-net-1", input.to_string()),
            env,
        )
        .await;
    let out = output(report);
    let error = out["error"].as_str().expect("a tool error");
    assert!(
        error.contains("network request to http://169.254.169.254/ denied: 169.254.169.254 is a private"),
        "{out}"
    );

    let logs = logs.text();
    let line = logs
        .lines()
        .find(|l| l.contains("network request denied") && l.contains("request_id=req-net-1"))
        .unwrap_or_else(|| panic!("no denial logged with the job's request id:\n{logs}"));
    for needle in ["job_id=", "tool=\"http_fetch\"", "url=http://169.254.169.254/"] {
        assert!(line.contains(needle), "{needle} missing from: {line}");
    }
}

#[tokio::test]
async fn an_allowed_https_request_to_a_server_without_tls_fails_cleanly() {
    // The allowlist admits https on the test server's port; the server
    // speaks plain HTTP, so the TLS handshake fails: a tool error, not a
    // crash, and the tool set keeps working.
    let runtime = runtime();
    let server = TestServer::start().await;
    let urls = [
        format!("https://127.0.0.1:{}/api/", server.port),
        format!("http://127.0.0.1:{}/api/", server.port),
    ];
    let tools = tool_allowing(&runtime, &urls, "20s").await;
    let url = format!("https://127.0.0.1:{}/api/hello", server.port);
    match fetch(&runtime, &tools, json!({"url": url})).await {
        Err(ToolError::Failed(message)) => assert!(message.starts_with(&url), "{message}"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    let plain = fetch(&runtime, &tools, json!({"url": server.url("/api/hello")}))
        .await
        .expect("plain http still works");
    assert_eq!(plain["status"], json!(200));
}

#[tokio::test]
async fn a_request_never_outlives_the_tool_call_timeout() {
    let runtime = runtime();
    let server = TestServer::start().await;
    let tools = tool_allowing(&runtime, &[server.url("/api/")], "1s").await;
    match fetch(&runtime, &tools, json!({"url": server.url("/api/slow")})).await {
        Err(ToolError::LimitExceeded(message)) => assert_eq!(message, "deadline limit exceeded (1000 ms)"),
        other => panic!("expected the call's deadline, got {other:?}"),
    }
    assert_eq!(server.paths(), ["/api/slow"]);
}
