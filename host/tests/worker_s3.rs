//! `s3://` agents: the worker fetches them with the real aws-sdk-s3 client
//! from a real moto server, reloads them when their ETag changes, keeps
//! serving the cached one while S3 is down, dead-letters what cannot be
//! fetched for good and retries what may pass.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use common::moto::Moto;
use common::worker_jobs::*;
use common::*;
use serde_json::json;
use wink_host::mailbox::{DeadLetter, Envelope, Mailbox, MemoryMailbox};
use wink_host::worker::{JobResources, ReplyRoutes, ReplyStatus, WorkerConfig, WorkerSummary};

const BUCKET: &str = "agents";

fn config(s3_endpoint: String) -> WorkerConfig {
    WorkerConfig {
        worker_id: Some("s3-worker".into()),
        concurrency: 4,
        max_attempts: 2,
        backoff_base: ms(50),
        backoff_max: ms(100),
        poll_wait: ms(50),
        agent_recheck: ms(100),
        s3_endpoint: Some(s3_endpoint),
        ..WorkerConfig::default()
    }
}

/// A worker on an in-memory queue whose `s3://` agents come from
/// `s3_endpoint`, with moto's static credentials.
fn start(moto: &Moto, s3_endpoint: String) -> Running {
    let resources = JobResources {
        aws_config: Some(moto.sdk_config()),
        ..JobResources::default()
    };
    Running::start(
        runtime(),
        Arc::new(MemoryMailbox::new("jobs")),
        config(s3_endpoint),
        resources,
        ReplyRoutes::registered_only(),
    )
}

async fn job(running: &Running, request_id: &str, agent: &str) {
    let mut job = Envelope::new(request_id, agent);
    job.input = json!({"prompt": request_id});
    send(running.mailbox.as_ref(), &job).await;
}

fn s3(moto: &Moto) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(&moto.sdk_config())
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

async fn put(client: &aws_sdk_s3::Client, key: &str, bytes: Vec<u8>) {
    client
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(ByteStream::from(bytes))
        .send()
        .await
        .expect("put object");
}

async fn bucket_with(moto: &Moto, objects: &[(&str, Vec<u8>)]) -> aws_sdk_s3::Client {
    let client = s3(moto);
    client
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .expect("create bucket");
    for (key, bytes) in objects {
        put(&client, key, bytes.clone()).await;
    }
    client
}

fn guest_bytes(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).expect("built guest")
}

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("address").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_agent_runs_is_reloaded_when_its_etag_changes_and_outlives_an_s3_outage() {
    let moto = Moto::start().await;
    let client = bucket_with(&moto, &[("v1/agent.wasm", guest_bytes("trivial"))]).await;
    let running = start(&moto, moto.endpoint());
    let agent = format!("s3://{BUCKET}/v1/agent.wasm");

    job(&running, "first", &agent).await;
    let first = reply(running.mailbox.as_ref(), "first").await;
    assert_eq!(first.status, ReplyStatus::Succeeded, "{first:?}");
    assert_eq!(first.output, Some(json!({"ok": true, "echo": {"prompt": "first"}})));

    // A new version under the same key: a job after the recheck interval
    // runs it.
    put(&client, "v1/agent.wasm", guest_bytes("hello")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    job(&running, "second", &agent).await;
    let second = reply(running.mailbox.as_ref(), "second").await;
    assert_eq!(second.status, ReplyStatus::Succeeded, "{second:?}");
    assert_eq!(
        second.output.as_ref().map(|output| output["text"].clone()),
        Some(json!("echo: second")),
        "the changed object was fetched again: {second:?}"
    );

    // S3 goes away: the cached agent goes on serving past its recheck.
    drop(moto);
    tokio::time::sleep(Duration::from_millis(300)).await;
    job(&running, "third", &agent).await;
    let third = reply(running.mailbox.as_ref(), "third").await;
    assert_eq!(third.status, ReplyStatus::Succeeded, "{third:?}");
    assert_eq!(third.attempts, 1);

    let summary = running.stop().await;
    assert_eq!((summary.succeeded, summary.retried, summary.dead_lettered), (3, 0, 0));
}

/// A loopback proxy to `upstream` (`http://host:port`) that holds each new
/// connection for `delay` before passing bytes either way: a slow network
/// in front of S3. Its endpoint URL.
async fn slow_proxy(upstream: &str, delay: Duration) -> String {
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// Fetching (and compiling) a cold agent may take longer than a lease: the
/// lease is extended meanwhile, so the job is not handed to another worker
/// and run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_kept_while_a_slow_agent_is_fetched() {
    let moto = Moto::start().await;
    bucket_with(&moto, &[("slow/agent.wasm", guest_bytes("trivial"))]).await;
    let endpoint = slow_proxy(&moto.endpoint(), Duration::from_millis(2_500)).await;
    let resources = JobResources {
        aws_config: Some(moto.sdk_config()),
        ..JobResources::default()
    };
    let config = WorkerConfig {
        lease: ms(1_000),
        heartbeat: ms(250),
        ..config(endpoint)
    };
    let running = Running::start(
        runtime(),
        Arc::new(MemoryMailbox::new("jobs")),
        config,
        resources,
        ReplyRoutes::registered_only(),
    );
    job(&running, "slow", &format!("s3://{BUCKET}/slow/agent.wasm")).await;
    let answer = reply(running.mailbox.as_ref(), "slow").await;
    assert_eq!(answer.status, ReplyStatus::Succeeded, "{answer:?}");
    assert_eq!(answer.attempts, 1, "{answer:?}");
    let summary = running.stop().await;
    assert_eq!((summary.lease_lost, summary.retried), (0, 0), "{summary:?}");
}

/// Agents load side by side: a job whose agent is slow to fetch holds up
/// the jobs of that agent only, not those of an agent on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_agent_fetch_holds_up_only_the_jobs_of_that_agent() {
    let moto = Moto::start().await;
    bucket_with(&moto, &[("slow/agent.wasm", guest_bytes("trivial"))]).await;
    let delay = Duration::from_secs(6);
    let endpoint = slow_proxy(&moto.endpoint(), delay).await;
    let running = start(&moto, endpoint);
    job(&running, "slow", &format!("s3://{BUCKET}/slow/agent.wasm")).await;
    // Long enough for the worker to claim the job and start the fetch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = std::time::Instant::now();
    job(&running, "local", guest("hello").to_str().expect("path")).await;

    let local = reply(running.mailbox.as_ref(), "local").await;
    assert_eq!(local.status, ReplyStatus::Succeeded, "{local:?}");
    // Waiting for the slow load would take the proxy's whole delay.
    assert!(
        sent.elapsed() < delay / 2,
        "the agent on disk took {:?}",
        sent.elapsed()
    );
    assert!(
        stored_reply(running.mailbox.as_ref(), "slow").await.is_none(),
        "the agent on disk waited for the slow fetch"
    );
    let slow = reply(running.mailbox.as_ref(), "slow").await;
    assert_eq!(slow.status, ReplyStatus::Succeeded, "{slow:?}");
    let summary = running.stop().await;
    assert_eq!((summary.succeeded, summary.retried), (2, 0), "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_agents_that_cannot_be_fetched_or_run_are_dead_lettered_at_once() {
    let moto = Moto::start().await;
    bucket_with(
        &moto,
        &[
            ("corrupt.wasm", b"\0asm not really".to_vec()),
            ("tool.wasm", guest_bytes("read_file")),
        ],
    )
    .await;
    let running = start(&moto, moto.endpoint());
    let cases = [
        (
            "no-key",
            format!("s3://{BUCKET}/missing.wasm"),
            "component_unreadable",
            "NoSuchKey",
        ),
        (
            "no-bucket",
            "s3://nobucket/agent.wasm".to_owned(),
            "component_unreadable",
            "NoSuchBucket",
        ),
        (
            "corrupt",
            format!("s3://{BUCKET}/corrupt.wasm"),
            "component_invalid",
            "corrupt",
        ),
        (
            "tool",
            format!("s3://{BUCKET}/tool.wasm"),
            "component_wrong_world",
            "agent",
        ),
    ];
    for (id, agent, _, _) in &cases {
        job(&running, id, agent).await;
    }
    let dead = dead_letters(running.mailbox.as_ref(), cases.len()).await;
    for (id, agent, kind, text) in &cases {
        let letter = dead_letter(&dead, id);
        assert_eq!(letter.reason.kind, *kind, "{id}: {letter:?}");
        assert!(letter.reason.message.contains(text), "{id}: {}", letter.reason.message);
        if *kind == "component_unreadable" {
            assert!(
                letter.reason.message.contains(agent.as_str()),
                "{id}: {}",
                letter.reason.message
            );
        }
        assert_eq!(letter.attempts, 1, "{id} is not retried");
    }
    let summary = running.stop().await;
    assert_eq!((summary.dead_lettered, summary.retried), (4, 0), "{summary:?}");
}

/// One job for the `s3://` agent on a worker whose S3 is `s3_endpoint`, run
/// until it is dead-lettered: its dead letter, and the worker's summary.
async fn dead_lettered(moto: &Moto, s3_endpoint: String, request_id: &str) -> (DeadLetter, WorkerSummary) {
    let running = start(moto, s3_endpoint);
    job(&running, request_id, &format!("s3://{BUCKET}/agent.wasm")).await;
    let dead = dead_letters(running.mailbox.as_ref(), 1).await;
    let letter = dead_letter(&dead, request_id).clone();
    assert_eq!(running.mailbox.reply(request_id).await.expect("reply"), None);
    (letter, running.stop().await)
}

/// `letter` is a fetch retried once, then given up as unavailable.
fn assert_unavailable_after_retry(letter: &DeadLetter, summary: &WorkerSummary, detail: &str) {
    assert_eq!(letter.reason.kind, "component_unavailable", "{letter:?}");
    let message = &letter.reason.message;
    assert!(
        message.contains(detail) && message.contains("(attempt 2 of 2)"),
        "{message}"
    );
    assert_eq!(letter.attempts, 2);
    assert_eq!((summary.retried, summary.dead_lettered), (1, 1), "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_s3_is_retried_then_dead_lettered_as_unavailable() {
    let moto = Moto::start().await;
    let unreachable = format!("http://127.0.0.1:{}", closed_port());
    let (letter, summary) = dead_lettered(&moto, unreachable, "offline").await;
    assert_unavailable_after_retry(&letter, &summary, "unreachable");
}

/// An S3 endpoint that answers every request with `status` and S3's XML
/// error body carrying `code`, as S3 itself does (HEAD answers carry none).
async fn s3_answering(status: u16, code: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let body = if request.method() == hyper::Method::HEAD {
                    String::new()
                } else {
                    format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                         <Error><Code>{code}</Code><Message>scripted answer</Message></Error>"
                    )
                };
                async move {
                    hyper::Response::builder()
                        .status(status)
                        .header("content-type", "application/xml")
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    endpoint
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_server_error_is_retried_and_a_rejected_bucket_name_is_not() {
    let moto = Moto::start().await;
    let (letter, summary) = dead_lettered(&moto, s3_answering(503, "SlowDown").await, "busy").await;
    assert_unavailable_after_retry(&letter, &summary, "SlowDown");

    let (letter, summary) = dead_lettered(&moto, s3_answering(400, "InvalidBucketName").await, "bad-name").await;
    assert_eq!(letter.reason.kind, "component_unreadable", "{letter:?}");
    assert!(
        letter.reason.message.contains("InvalidBucketName"),
        "{}",
        letter.reason.message
    );
    assert_eq!(letter.attempts, 1, "refused at once, not retried");
    assert_eq!((summary.retried, summary.dead_lettered), (0, 1), "{summary:?}");
}
