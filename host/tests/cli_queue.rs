//! The queue commands (`enqueue`, `queue`, `dlq`): the real binary for flags,
//! output and exit statuses, and the library functions behind them in-process.
//!
//! The in-memory mailbox lives inside one process, so commands run through
//! the binary never share a queue there; the round trips across commands run
//! against real servers (moto's SQS, Redis).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use indicatif::ProgressBar;
use wink_host::cli::queue::{
    EnqueueSummary, JsonlOptions, MAX_LINE_BYTES, Rejection, dead_letter_views, enqueue_jsonl, format_rfc3339_ms,
    render_dead_letters,
};
use wink_host::mailbox::{
    Acked, DeadLetter, DeadLetterReason, DeadSelection, Delivery, Depth, Envelope, Lease, Mailbox, MailboxError,
    MemoryMailbox, PurgeScope, Reply, Sent, SqsMailbox, SqsOptions,
};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn wink_host(args: &[&str]) -> Output {
    wink_host_with(args, None, &[])
}

fn wink_host_with_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    wink_host_with(args, stdin, &[])
}

/// The binary under test: `WINK_HOST_BIN` when set (a release build, the one
/// in an image, or a private copy when the target directory is shared with
/// other checkouts that relink it), else the one cargo built for this test.
fn binary() -> std::path::PathBuf {
    std::env::var_os("WINK_HOST_BIN").map_or_else(|| env!("CARGO_BIN_EXE_wink-host").into(), Into::into)
}

fn wink_host_with(args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary());
    command
        .args(args)
        .envs(envs.iter().copied())
        .env("WINK_LOG", "warn")
        .env_remove("WINK_MAILBOX")
        .env_remove("WINK_QUEUE")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run wink-host");
    if let Some(text) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait for wink-host")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `args` after `enqueue --mailbox memory:// --queue jobs`.
fn enqueue(args: &[&str]) -> Output {
    let mut all = vec!["enqueue", "--mailbox", "memory://", "--queue", "jobs"];
    all.extend_from_slice(args);
    wink_host(&all)
}

fn envelope_line(request_id: &str) -> String {
    let mut envelope = Envelope::new(request_id, "agents/hello.wasm");
    envelope.input = serde_json::json!({ "prompt": request_id });
    String::from_utf8(envelope.to_bytes()).expect("utf-8")
}

fn write_jsonl(dir: &Path, lines: &[String]) -> String {
    let path = dir.join("jobs.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write JSONL");
    path.to_str().expect("utf-8 path").to_owned()
}

#[test]
fn help_documents_every_queue_command_and_its_exit_statuses() {
    let commands: [&[&str]; 7] = [
        &["enqueue"],
        &["queue", "stats"],
        &["queue", "reply"],
        &["queue", "purge"],
        &["dlq", "list"],
        &["dlq", "requeue"],
        &["dlq", "purge"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let out = wink_host(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        // As one line: clap wraps the help where it likes.
        let help = stdout(&out).split_whitespace().collect::<Vec<_>>().join(" ");
        for expected in [
            "--mailbox",
            "WINK_MAILBOX",
            "--queue",
            "WINK_QUEUE",
            "Exit status",
            "4 not found",
        ] {
            assert!(help.contains(expected), "{args:?} help lacks {expected}:\n{help}");
        }
    }
    let help = stdout(&wink_host(&["enqueue", "--help"]));
    for flag in [
        "--agent",
        "--input",
        "--request-id",
        "--reply-to",
        "--deadline",
        "--tag",
        "--max-input-tokens",
        "--max-output-tokens",
        "--max-total-tokens",
        "--max-usd",
        "--max-turns",
        "--timeout",
        "--narrow",
        "--traceparent",
        "--jsonl",
        "--strict",
        "--dry-run",
        "--concurrency",
        "--json",
    ] {
        assert!(help.contains(flag), "enqueue --help lacks {flag}:\n{help}");
    }
}

#[test]
fn enqueue_one_job_prints_its_request_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let narrow = dir.path().join("narrow.toml");
    std::fs::write(&narrow, "models = [\"m1\"]\nbudget = { max_turns = 2 }\n").expect("write narrowing");
    let out = enqueue(&[
        "--agent",
        "s3://agents/hello.wasm",
        "--input",
        r#"{"prompt":"hi"}"#,
        "--request-id",
        "order-7",
        "--reply-to",
        "replies",
        "--deadline",
        "10m",
        "--tag",
        "team=search",
        "--max-turns",
        "3",
        "--max-usd",
        "0.5",
        "--timeout",
        "30s",
        "--narrow",
        narrow.to_str().expect("path"),
        "--traceparent",
        TRACEPARENT,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "enqueued order-7\n");

    let out = enqueue(&["--agent", "a.wasm", "--request-id", "order-8", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON result");
    assert_eq!(
        result,
        serde_json::json!({"request_id": "order-8", "result": "enqueued"})
    );
}

#[test]
fn input_can_come_from_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input.json");
    std::fs::write(&input, r#"{"prompt": "from a file"}"#).expect("write input");
    let arg = format!("@{}", input.display());
    let out = enqueue(&["--agent", "a.wasm", "--input", &arg, "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("valid "), "{}", stdout(&out));
}

#[test]
fn default_request_ids_are_fresh_and_valid() {
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let out = enqueue(&["--agent", "a.wasm"]);
            assert!(out.status.success(), "{}", stderr(&out));
            let text = stdout(&out);
            let id = text.trim().strip_prefix("enqueued ").expect("enqueued ID").to_owned();
            wink_host::mailbox::validate_request_id(&id).expect("a valid request id");
            id
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
}

#[test]
fn bad_values_fail_with_one_line_naming_them() {
    let usage = 2;
    let failure = 1;
    let cases: &[(&[&str], &str, i32)] = &[
        (
            &["--agent", "a.wasm", "--input", "{oops"],
            "--input is not valid JSON",
            failure,
        ),
        (
            &["--agent", "a.wasm", "--input", "@/no/such.json"],
            "/no/such.json",
            failure,
        ),
        (&["--agent", "a.wasm", "--request-id", "a b"], "whitespace", failure),
        (&["--agent", "a.wasm", "--traceparent", "00-zz"], "`00-zz`", failure),
        (
            &["--agent", "a.wasm", "--deadline", "1700000000"],
            "`1700000000` looks like Unix seconds",
            failure,
        ),
        (&["--agent", "a.wasm", "--deadline", "soon"], "`soon`", failure),
        (
            &["--agent", "a.wasm", "--deadline", "2001-01-01T00:00:00Z"],
            "has already passed",
            failure,
        ),
        (&["--agent", "a.wasm", "--reply-to", "a b"], "queue name `a b`", failure),
        (&["--agent", "http://x/a.wasm"], "scheme `http`", failure),
        (
            &["--agent", "a.wasm", "--narrow", "/no/such.toml"],
            "/no/such.toml",
            failure,
        ),
        (
            &["--agent", "a.wasm", "--tag", "team"],
            "`team` is not KEY=VALUE",
            usage,
        ),
        (&["--agent", "a.wasm", "--max-usd=-1"], "`-1`", usage),
        (&["--agent", "a.wasm", "--concurrency", "0"], "0", usage),
        (&["--agent", "a.wasm", "--strict"], "--jsonl", usage),
        (&["--jsonl", "x.jsonl", "--agent", "a.wasm"], "--agent", usage),
        (&["--jsonl", "x.jsonl", "--max-turns", "3"], "--max-turns", usage),
        (&["--jsonl", "/no/such.jsonl"], "/no/such.jsonl", failure),
        (&["--input", "{}"], "--agent", usage),
    ];
    for (args, expected, code) in cases {
        assert_one_line_failure(&enqueue(args), args, expected, *code);
    }
    let elsewhere: &[(&[&str], &str, i32)] = &[
        (&["enqueue", "--agent", "a.wasm"], "no mailbox given", usage),
        (
            &["enqueue", "--mailbox", "memory://", "--agent", "a.wasm"],
            "no queue given",
            usage,
        ),
        (
            &[
                "enqueue",
                "--mailbox",
                "memory://",
                "--queue",
                "a b",
                "--agent",
                "a.wasm",
            ],
            "queue name `a b`",
            failure,
        ),
        (
            &["enqueue", "--mailbox", "ftp://x", "--queue", "q", "--agent", "a.wasm"],
            "unsupported mailbox URL scheme `ftp`",
            failure,
        ),
        (
            &["queue", "purge", "--mailbox", "memory://", "--queue", "q"],
            "pass --yes",
            usage,
        ),
        (
            &["dlq", "purge", "--mailbox", "memory://", "--queue", "q"],
            "pass --yes",
            usage,
        ),
        (
            &["queue", "reply", "a b", "--mailbox", "memory://", "--queue", "q"],
            "whitespace",
            failure,
        ),
        (
            &["dlq", "requeue", "--mailbox", "memory://", "--queue", "q"],
            "--all",
            usage,
        ),
        (
            &["dlq", "requeue", "--all", "x", "--mailbox", "memory://", "--queue", "q"],
            "--all",
            usage,
        ),
    ];
    for (args, expected, code) in elsewhere {
        assert_one_line_failure(&wink_host(args), args, expected, *code);
    }
}

/// Failures print one line naming the bad value; clap's usage errors start
/// with such a line and may add usage hints after it.
fn assert_one_line_failure(out: &Output, args: &[&str], expected: &str, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(out));
    assert!(out.stdout.is_empty(), "{args:?} printed to stdout: {}", stdout(out));
    let err = stderr(out);
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    let own_error = !err.contains("For more information, try '--help'");
    if own_error {
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    assert!(err.contains(expected), "{args:?}: expected {expected:?} in {err}");
}

#[test]
fn mailbox_passwords_never_reach_the_error() {
    let out = wink_host(&[
        "queue",
        "stats",
        "--mailbox",
        "nosuch://user:hunter22@127.0.0.1:1",
        "--queue",
        "q",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("nosuch://user:[REDACTED]@127.0.0.1:1"), "{err}");
    assert!(!err.contains("hunter22"), "{err}");
}

#[test]
fn not_found_exits_4() {
    let out = wink_host(&["queue", "reply", "r-1", "--mailbox", "memory://", "--queue", "q"]);
    assert_one_line_failure(&out, &["queue", "reply"], "no reply stored for request id `r-1`", 4);
    let out = wink_host(&[
        "dlq",
        "requeue",
        "x",
        "y",
        "x",
        "--mailbox",
        "memory://",
        "--queue",
        "q",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(stdout(&out), "requeued 0 dead letters to queue q\n");
    assert!(
        stderr(&out).contains("2 of the 2 given ids are not in the dead-letter queue"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn empty_queue_commands_report_zeroes() {
    let base = ["--mailbox", "memory://", "--queue", "q"];
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&base);
        let out = wink_host(&all);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let stats: serde_json::Value = serde_json::from_str(&run(&["queue", "stats", "--json"])).expect("JSON stats");
    assert_eq!(
        stats,
        serde_json::json!({"queue": "q", "ready": 0, "in_flight": 0, "delayed": 0, "dead": 0, "backlog": 0})
    );
    assert!(run(&["queue", "stats"]).contains("backlog    0"));
    assert_eq!(
        run(&["queue", "purge", "--yes"]),
        "purged 0 pending messages from queue q\n"
    );
    assert_eq!(run(&["dlq", "purge", "--yes"]), "purged 0 dead letters from queue q\n");
    assert_eq!(run(&["dlq", "list", "--json"]), "[]\n");
    assert_eq!(run(&["dlq", "list"]), "ID\tATTEMPTS\tDEAD_AT\tREASON\tPAYLOAD\n");
}

/// A file with good lines, a blank line, and one of each kind of bad line.
fn mixed_lines() -> Vec<String> {
    vec![
        envelope_line("r1"),
        String::new(),
        "{not json".into(),
        envelope_line("r2"),
        envelope_line("r1"),
        r#"{"version":2,"request_id":"r3","agent":"a.wasm"}"#.into(),
        r#"{"version":1,"request_id":"r4","agent":"a.wasm","budgett":{}}"#.into(),
    ]
}

#[test]
fn jsonl_enqueues_good_lines_and_reports_bad_ones_by_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_jsonl(dir.path(), &mixed_lines());
    let out = enqueue(&["--jsonl", &file]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], "6 lines: 2 enqueued, 1 duplicates, 3 rejected, 0 failed",
        "{text}"
    );
    assert!(
        lines[1].starts_with("line 3: rejected: malformed job envelope"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("line 6: rejected: unsupported envelope version 2"),
        "{text}"
    );
    assert!(
        lines[3].contains("line 7: rejected:") && lines[3].contains("unknown field `budgett`"),
        "{text}"
    );
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        stderr(&out).contains("error: 3 of 6 lines rejected"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn jsonl_reads_stdin_and_prints_json() {
    let input = mixed_lines().join("\n");
    let out = wink_host_with_stdin(
        &[
            "enqueue",
            "--mailbox",
            "memory://",
            "--queue",
            "jobs",
            "--jsonl",
            "-",
            "--json",
        ],
        Some(&input),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary["lines"], 6);
    assert_eq!(summary["valid"], 3);
    assert_eq!(summary["enqueued"], 2);
    assert_eq!(summary["duplicates"], 1);
    assert_eq!(summary["rejected"], 3);
    let rejected_lines: Vec<u64> = summary["rejections"]
        .as_array()
        .expect("rejections")
        .iter()
        .map(|r| r["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(rejected_lines, [3, 6, 7]);
    assert_eq!(summary["failed"], serde_json::json!([]));
}

#[test]
fn strict_stops_at_the_first_rejected_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_jsonl(dir.path(), &mixed_lines());
    let out = enqueue(&["--jsonl", &file, "--strict", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary["lines"], 2, "{summary}");
    assert_eq!(summary["enqueued"], 1, "{summary}");
    assert_eq!(summary["stopped_after_line"], 3, "{summary}");
}

#[test]
fn dry_run_validates_without_a_mailbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_jsonl(dir.path(), &mixed_lines());
    let out = wink_host(&["enqueue", "--jsonl", &file, "--dry-run"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("6 lines: 3 valid, 3 rejected (dry run: nothing sent)\n"),
        "{}",
        stdout(&out)
    );
    let good = write_jsonl(dir.path(), &[envelope_line("a"), envelope_line("b")]);
    let out = wink_host(&["enqueue", "--jsonl", &good, "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn options(concurrency: usize) -> JsonlOptions {
    JsonlOptions {
        concurrency,
        strict: false,
    }
}

async fn drain(mailbox: &dyn Mailbox) -> Vec<Delivery> {
    let mut all = Vec::new();
    loop {
        let batch = mailbox
            .claim(64, Duration::from_secs(60), Duration::ZERO)
            .await
            .expect("claim");
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

#[tokio::test]
async fn every_valid_line_is_sent_once_with_its_canonical_envelope() {
    let mut lines = Vec::new();
    for i in 0..500 {
        lines.push(if i % 50 == 7 {
            format!("garbage {i}")
        } else {
            envelope_line(&format!("job-{}", i % 450))
        });
    }
    let input = lines.join("\r\n");
    let mailbox = Arc::new(MemoryMailbox::new("jobs"));
    let summary = enqueue_jsonl(
        input.as_bytes(),
        Some(mailbox.clone()),
        options(8),
        &ProgressBar::hidden(),
    )
    .await
    .expect("enqueue");
    let expected_rejections: Vec<u64> = (0..500).filter(|i| i % 50 == 7).map(|i| i + 1).collect();
    assert_eq!(
        summary.rejections.iter().map(|r| r.line).collect::<Vec<_>>(),
        expected_rejections
    );
    assert_eq!(summary.lines, 500);
    assert_eq!(summary.rejected, 10);
    // Lines 450..500 repeat ids 0..50; those at i % 50 == 7 were garbage both times.
    assert_eq!(summary.enqueued, 450 - 9);
    assert_eq!(summary.duplicates, 50 - 1);
    assert!(summary.failed.is_empty());

    let deliveries = drain(&*mailbox).await;
    assert_eq!(deliveries.len() as u64, summary.enqueued);
    let mut ids: Vec<String> = deliveries
        .iter()
        .map(|d| {
            let envelope = Envelope::parse(&d.payload).expect("a valid envelope was sent");
            assert_eq!(envelope.input["prompt"], envelope.request_id.as_str());
            envelope.request_id
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as u64, summary.enqueued, "each id sent once");
}

#[tokio::test]
async fn an_overlong_line_is_rejected_and_the_next_line_still_read() {
    let long = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_LINE_BYTES));
    let input = [envelope_line("before"), long, envelope_line("after")].join("\n");
    let mailbox = Arc::new(MemoryMailbox::new("jobs"));
    let summary = enqueue_jsonl(
        input.as_bytes(),
        Some(mailbox.clone()),
        options(2),
        &ProgressBar::hidden(),
    )
    .await
    .expect("enqueue");
    assert_eq!(
        (summary.lines, summary.enqueued, summary.rejected),
        (3, 2, 1),
        "{summary:?}"
    );
    assert_eq!(summary.rejections[0].line, 2);
    assert!(summary.rejections[0].reason.contains("longer than"), "{summary:?}");
}

#[tokio::test]
async fn dry_run_sends_nothing() {
    let input = [envelope_line("a"), "nope".into(), envelope_line("b")].join("\n");
    let summary = enqueue_jsonl(input.as_bytes(), None, options(4), &ProgressBar::hidden())
        .await
        .expect("validate");
    assert_eq!(
        (summary.lines, summary.valid, summary.rejected, summary.enqueued),
        (3, 2, 1, 0)
    );
    assert_eq!(summary.rejections.len(), 1);
    let Rejection { line, reason } = &summary.rejections[0];
    assert_eq!(*line, 2);
    assert!(reason.starts_with("malformed job envelope: "), "{reason}");
}

/// Fault injection around the real in-memory mailbox: after `healthy` sends,
/// every send fails as if the backend had gone away.
#[derive(Debug)]
struct FailingAfter {
    inner: MemoryMailbox,
    healthy: usize,
    sends: AtomicUsize,
}

#[async_trait]
impl Mailbox for FailingAfter {
    fn queue(&self) -> &str {
        self.inner.queue()
    }
    async fn send(&self, request_id: &str, payload: Bytes) -> Result<Sent, MailboxError> {
        if self.sends.fetch_add(1, Ordering::SeqCst) >= self.healthy {
            return Err(MailboxError::Backend("connection reset".into()));
        }
        self.inner.send(request_id, payload).await
    }
    async fn claim(&self, max: usize, lease: Duration, wait: Duration) -> Result<Vec<Delivery>, MailboxError> {
        self.inner.claim(max, lease, wait).await
    }
    async fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<(), MailboxError> {
        self.inner.extend(lease, lease_for).await
    }
    async fn ack(&self, lease: &Lease, reply: &Reply) -> Result<Acked, MailboxError> {
        self.inner.ack(lease, reply).await
    }
    async fn nack(&self, lease: &Lease, delay: Duration) -> Result<(), MailboxError> {
        self.inner.nack(lease, delay).await
    }
    async fn dead_letter(&self, lease: &Lease, reason: &DeadLetterReason) -> Result<(), MailboxError> {
        self.inner.dead_letter(lease, reason).await
    }
    async fn reap(&self) -> Result<u64, MailboxError> {
        self.inner.reap().await
    }
    async fn depth(&self) -> Result<Depth, MailboxError> {
        self.inner.depth().await
    }
    async fn purge(&self, scope: PurgeScope) -> Result<u64, MailboxError> {
        self.inner.purge(scope).await
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, MailboxError> {
        self.inner.dead_letters(limit).await
    }
    async fn requeue_dead(&self, selection: &DeadSelection) -> Result<u64, MailboxError> {
        self.inner.requeue_dead(selection).await
    }
    async fn reply(&self, request_id: &str) -> Result<Option<Bytes>, MailboxError> {
        self.inner.reply(request_id).await
    }
}

#[tokio::test]
async fn a_failing_mailbox_stops_the_run_and_every_unsent_line_is_accounted_for() {
    let lines: Vec<String> = (0..100).map(|i| envelope_line(&format!("job-{i}"))).collect();
    let input = lines.join("\n");
    let mailbox = Arc::new(FailingAfter {
        inner: MemoryMailbox::new("jobs"),
        healthy: 20,
        sends: AtomicUsize::new(0),
    });
    let summary: EnqueueSummary = enqueue_jsonl(
        input.as_bytes(),
        Some(mailbox.clone()),
        options(4),
        &ProgressBar::hidden(),
    )
    .await
    .expect("enqueue");
    assert_eq!(summary.enqueued, 20);
    let stopped = summary.stopped_after_line.expect("the run stopped");
    assert!(stopped < 100, "{summary:?}");
    assert!(
        summary
            .stop_reason
            .as_deref()
            .is_some_and(|r| r.contains("connection reset"))
    );
    // Every line read is either enqueued or listed as failed, and no later line was read.
    assert_eq!(summary.enqueued + summary.failed.len() as u64, stopped, "{summary:?}");
    assert_eq!(summary.lines, stopped);
    let queued: Vec<String> = drain(&mailbox.inner)
        .await
        .iter()
        .map(|d| Envelope::parse(&d.payload).expect("envelope").request_id)
        .collect();
    for failure in &summary.failed {
        let id = format!("job-{}", failure.line - 1);
        assert!(
            !queued.contains(&id),
            "line {} is reported unsent but was queued",
            failure.line
        );
    }
}

#[tokio::test]
async fn dead_letters_are_shown_with_reason_timestamps_and_a_one_line_preview() {
    let mailbox = MemoryMailbox::new("jobs");
    let payload = format!("{}\n{}", "x".repeat(200), "tail");
    mailbox
        .send("poison", Bytes::from(payload.clone()))
        .await
        .expect("send");
    mailbox
        .send("healthy", Bytes::from(envelope_line("healthy")))
        .await
        .expect("send");
    let deliveries = drain(&mailbox).await;
    let poison = deliveries
        .iter()
        .find(|d| d.lease.message_id == "poison")
        .expect("poison claimed");
    let reason = DeadLetterReason {
        kind: "malformed_envelope".into(),
        message: "not JSON\nat all".into(),
    };
    mailbox.dead_letter(&poison.lease, &reason).await.expect("dead-letter");

    let views = dead_letter_views(&mailbox, 10).await.expect("list");
    assert_eq!(views.len(), 1);
    let view = &views[0];
    assert_eq!(view.id, "poison");
    assert_eq!(view.reason, reason);
    assert_eq!(view.attempts, 1);
    assert_eq!(view.payload_bytes, payload.len());
    assert_eq!(view.payload_preview, format!("{}…", "x".repeat(120)));
    assert_eq!(view.enqueued_at, format_rfc3339_ms(view.enqueued_at_ms));
    assert!(view.dead_at_ms >= view.enqueued_at_ms);

    let text = render_dead_letters(&views, false).expect("text");
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows[1].starts_with(&format!(
            "poison\t1\t{}\tmalformed_envelope: not JSON\\nat all\t",
            view.dead_at
        )),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&render_dead_letters(&views, true).expect("json")).expect("JSON");
    assert_eq!(json[0]["reason"]["kind"], "malformed_envelope");
    assert_eq!(json[0]["attempts"], 1);
    assert_eq!(json[0]["dead_at_ms"], view.dead_at_ms);

    assert_eq!(mailbox.requeue_dead(&DeadSelection::All).await.expect("requeue"), 1);
    assert!(dead_letter_views(&mailbox, 10).await.expect("list").is_empty());
}

/// The AWS environment of a CLI run against moto: static credentials (moto
/// takes any), a region, and no instance-metadata lookups.
const MOTO_ENV: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "moto-access-key"),
    ("AWS_SECRET_ACCESS_KEY", "moto-secret-access-key"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

#[tokio::test]
async fn sqs_round_trip_enqueue_stats_and_purge_across_processes() {
    let moto = common::moto::Moto::start().await;
    let url = format!("sqs://?endpoint={}&create=true", moto.endpoint());
    let on_queue = |args: &[&str], stdin: Option<&str>| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--mailbox", &url, "--queue", "cli-jobs"]);
        wink_host_with(&all, stdin, &MOTO_ENV)
    };
    let input = [
        envelope_line("s1"),
        "{oops".into(),
        envelope_line("s2"),
        envelope_line("s3"),
    ]
    .join("\n");
    let out = on_queue(&["enqueue", "--jsonl", "-", "--json"], Some(&input));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let summary: EnqueueSummary = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!((summary.enqueued, summary.rejected), (3, 1), "{summary:?}");
    assert_eq!(summary.rejections[0].line, 2);

    let out = on_queue(&["queue", "stats", "--json"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let depth: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON stats");
    assert_eq!(depth["ready"], 3, "{depth}");
    assert_eq!(depth["backlog"], 3, "{depth}");

    // The same queue, read in this process through the library, holds the validated envelopes.
    let options = SqsOptions::from_url(&url).expect("SQS URL");
    let mailbox = SqsMailbox::connect(&moto.sdk_config(), "cli-jobs", &options)
        .await
        .expect("open the SQS queue");
    let mut ids: Vec<String> = drain(&mailbox)
        .await
        .iter()
        .map(|d| Envelope::parse(&d.payload).expect("envelope").request_id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["s1", "s2", "s3"]);

    let out = on_queue(&["enqueue", "--agent", "a.wasm", "--request-id", "s4"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = on_queue(&["queue", "purge", "--yes"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("purged "), "{}", stdout(&out));
    let out = on_queue(&["dlq", "list", "--json"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "[]\n");

    // SQS keeps no replies: the refusal is one line saying where to look instead.
    let out = on_queue(&["queue", "reply", "s1"], None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("stores no replies"), "{}", stderr(&out));
}

/// SQS queue `queue` on `moto`, created, holding `payloads` as dead
/// letters; its URL, and the mailbox.
async fn sqs_dead_letters<S: AsRef<str>>(
    moto: &common::moto::Moto,
    queue: &str,
    payloads: &[(S, Bytes)],
) -> (String, SqsMailbox) {
    let url = format!("sqs://?endpoint={}&create=true", moto.endpoint());
    let options = SqsOptions::from_url(&url).expect("SQS URL");
    let mailbox = SqsMailbox::connect(&moto.sdk_config(), queue, &options)
        .await
        .expect("open the SQS queue");
    for (request_id, payload) in payloads {
        mailbox.send(request_id.as_ref(), payload.clone()).await.expect("send");
    }
    let reason = DeadLetterReason {
        kind: "k".into(),
        message: "m".into(),
    };
    let mut dead = 0;
    while dead < payloads.len() {
        for delivery in drain(&mailbox).await {
            mailbox
                .dead_letter(&delivery.lease, &reason)
                .await
                .expect("dead-letter");
            dead += 1;
        }
    }
    (url, mailbox)
}

/// `wink-host dlq requeue --all` on SQS queue `queue` at `url`, which is
/// to exit `code` after printing that it moved `moved`: its one-line error.
fn requeue_all_partly(url: &str, queue: &str, code: i32, moved: u64) -> String {
    let out = wink_host_with(
        &["dlq", "requeue", "--all", "--mailbox", url, "--queue", queue],
        None,
        &MOTO_ENV,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert_eq!(
        stdout(&out),
        format!("requeued {moved} dead letters to queue {queue}\n")
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[tokio::test]
async fn dlq_requeue_moves_what_the_queue_takes_and_exits_3_for_what_it_refuses() {
    let moto = common::moto::Moto::start().await;
    let payloads = [("big", Bytes::from(vec![b'x'; 1200])), ("small", Bytes::from("small"))];
    let (url, mailbox) = sqs_dead_letters(&moto, "cli-dead", &payloads).await;
    // The queue now takes less than the big dead letter holds.
    moto.set_max_message_size("cli-dead", 1024).await;

    let err = requeue_all_partly(&url, "cli-dead", 3, 1);
    assert!(err.contains("refused 1, which stay dead"), "{err}");
    let depth = mailbox.depth().await.expect("depth");
    assert_eq!((depth.ready, depth.dead), (1, 1), "{depth:?}");
}

// The proxy serves from a worker thread while the command blocks the test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn dlq_requeue_cut_off_partway_prints_what_it_moved_and_exits_1() {
    let moto = common::moto::Moto::start().await;
    let payloads: Vec<(String, Bytes)> = (0..15).map(|i| (format!("r{i}"), Bytes::from("x"))).collect();
    let (_, mailbox) = sqs_dead_letters(&moto, "cli-cut", &payloads).await;
    // SQS goes away after the first scan of ten.
    let endpoint = moto.cut_off_endpoint(b"AmazonSQS.ReceiveMessage", 1).await;
    let url = format!("sqs://?endpoint={endpoint}");

    let err = requeue_all_partly(&url, "cli-cut", 1, 10);
    assert!(
        err.starts_with("error: requeued 10 dead letters, then the mailbox failed: mailbox unavailable"),
        "{err}"
    );
    let depth = mailbox.depth().await.expect("depth");
    assert_eq!((depth.ready, depth.dead), (10, 5), "{depth:?}");
}
