//! The sandbox holds: limits end runaway guests with a typed error naming the
//! limit, the filesystem stops at the workspace, and nothing ambient leaks in.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use wink_host::job::JobError;
use wink_host::runtime::{Limit, LimitExceeded, Limits};

fn limit_of(report: &wink_host::job::JobReport) -> Option<Limit> {
    match &report.outcome {
        Err(JobError::LimitExceeded(LimitExceeded { limit, .. })) => Some(*limit),
        _ => None,
    }
}

#[tokio::test]
async fn trivial_agent_echoes_its_input() {
    let runtime = runtime();
    let agent = load(&runtime, "trivial").await;
    let out = output(run(&runtime, &agent, r#"{"n": 7}"#, env()).await);
    assert_eq!(out, json!({"ok": true, "echo": {"n": 7}}));
}

#[tokio::test]
async fn infinite_loop_runs_out_of_fuel() {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let mut env = env();
    env.limits = Limits {
        fuel: 50_000_000,
        ..test_limits()
    };
    let report = run(&runtime, &agent, r#"{"mode": "spin"}"#, env).await;
    assert_eq!(limit_of(&report), Some(Limit::Fuel), "{:?}", report.outcome);
    let message = report.outcome.unwrap_err().to_string();
    assert_eq!(message, "fuel limit exceeded (50000000 fuel)");
    assert!(report.stats.fuel_consumed >= 50_000_000);
}

#[tokio::test]
async fn infinite_loop_is_stopped_at_the_deadline() {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let mut env = env();
    env.limits = Limits {
        fuel: u64::MAX,
        deadline: Duration::from_millis(300),
        ..test_limits()
    };
    let started = Instant::now();
    let report = run(&runtime, &agent, r#"{"mode": "spin"}"#, env).await;
    assert_eq!(limit_of(&report), Some(Limit::Deadline), "{:?}", report.outcome);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        report.outcome.unwrap_err().to_string(),
        "deadline limit exceeded (300 ms)"
    );
}

#[tokio::test]
async fn deadline_holds_while_the_guest_waits_in_a_slow_host_call() {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let slow = scripted(r#"{"responses": [{"content": [{"text": "late"}], "delay_ms": 30000}]}"#);
    let mut env = env_with(slow);
    env.limits = Limits {
        deadline: Duration::from_millis(300),
        ..test_limits()
    };
    let started = Instant::now();
    let report = run(&runtime, &agent, r#"{"mode": "model"}"#, env).await;
    assert_eq!(limit_of(&report), Some(Limit::Deadline), "{:?}", report.outcome);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(report.stats.model_calls, 1);
}

#[tokio::test]
async fn memory_bomb_hits_the_memory_limit() {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let mut env = env();
    env.limits = Limits {
        memory_bytes: 32 << 20,
        ..test_limits()
    };
    let report = run(&runtime, &agent, r#"{"mode": "alloc"}"#, env).await;
    assert_eq!(limit_of(&report), Some(Limit::Memory), "{:?}", report.outcome);
    assert_eq!(
        report.outcome.unwrap_err().to_string(),
        "memory limit exceeded (33554432 bytes)"
    );
}

#[tokio::test]
async fn unbounded_recursion_overflows_the_stack_cleanly() {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let report = run(&runtime, &agent, r#"{"mode": "recurse"}"#, env()).await;
    // Depending on frame layout, Rust guests exhaust either the wasm call
    // stack (a stack limit) or their shadow stack in linear memory (an
    // out-of-bounds trap). Either way the job, not the host, ends.
    match &report.outcome {
        Err(JobError::LimitExceeded(e)) => assert_eq!(e.limit, Limit::Stack),
        Err(JobError::Trap(message)) => assert!(message.contains("out of bounds"), "{message}"),
        other => panic!("expected a stack failure, got {other:?}"),
    }
}

#[tokio::test]
async fn output_over_the_cap_is_refused() {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let mut env = env();
    env.limits = Limits {
        output_bytes: 1000,
        ..test_limits()
    };
    let report = run(&runtime, &agent, r#"{"mode": "output", "bytes": 5000}"#, env).await;
    assert_eq!(limit_of(&report), Some(Limit::Output), "{:?}", report.outcome);
    assert_eq!(
        report.outcome.unwrap_err().to_string(),
        "output limit exceeded (1000 bytes)"
    );
}

#[tokio::test]
async fn stdout_flood_is_captured_bounded_without_failing_the_job() {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let mut env = env();
    env.limits = Limits {
        stdio_bytes: 1024,
        ..test_limits()
    };
    let report = run(&runtime, &agent, r#"{"mode": "stdout", "bytes": 100000}"#, env).await;
    let stats = report.stats.clone();
    assert_eq!(output(report), json!({"ok": true}));
    assert_eq!(stats.stdout.bytes.len(), 1024);
    assert_eq!(stats.stdout.dropped, 100_000 - 1024);
    assert!(stats.stdout.bytes.iter().all(|&b| b == b'y'));
    assert_eq!(stats.stderr.bytes.len(), 1024);
}

#[tokio::test]
async fn a_trapping_job_leaves_concurrent_jobs_unharmed() {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let mut jobs = Vec::new();
    for i in 0..8 {
        let (runtime, agent) = (runtime.clone(), agent.clone());
        let input = match i {
            0 => json!({"mode": "trap"}),
            1 => json!({"mode": "alloc"}),
            _ => json!({"mode": "echo", "i": i}),
        };
        jobs.push(tokio::spawn(async move {
            run(&runtime, &agent, &input.to_string(), env()).await
        }));
    }
    let mut reports = Vec::new();
    for job in jobs {
        reports.push(job.await.expect("job task"));
    }
    match &reports[0].outcome {
        Err(JobError::Trap(message)) => {
            assert!(message.contains("unreachable") || message.contains("trap"), "{message}")
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(limit_of(&reports[1]), Some(Limit::Memory));
    for (i, report) in reports.into_iter().enumerate().skip(2) {
        assert_eq!(output(report), json!({"mode": "echo", "i": i}));
    }
}

#[tokio::test]
async fn guest_panics_become_trap_errors() {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let report = run(&runtime, &agent, r#"{"mode": "trap"}"#, env()).await;
    assert!(
        matches!(&report.outcome, Err(JobError::Trap(_))),
        "{:?}",
        report.outcome
    );
    let stderr = String::from_utf8_lossy(&report.stats.stderr.bytes).into_owned();
    assert!(
        stderr.contains("adversary trap"),
        "panic message should be captured: {stderr}"
    );
}

#[tokio::test]
async fn no_environment_variables_or_arguments_reach_the_guest() {
    // SAFETY-free way to prove env isolation: the test process has PATH and
    // HOME; the guest must see neither.
    assert!(std::env::var_os("PATH").is_some());
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let out = output(run(&runtime, &agent, r#"{"mode": "env"}"#, env()).await);
    assert_eq!(out["env"], json!([]));
    assert!(out["args"].as_array().is_some_and(|a| a.len() <= 1), "{out}");
}

#[tokio::test]
async fn no_network_even_to_a_listening_loopback_port() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let input = json!({"mode": "net", "addr": addr.to_string()}).to_string();
    let out = output(run(&runtime, &agent, &input, env()).await);
    assert!(out.get("error").is_some(), "connect must fail: {out}");
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(listener.accept().is_err(), "nothing may have connected");
}

#[tokio::test]
async fn a_guest_flooding_the_logs_has_its_records_cut_short_and_capped() {
    let logs = common::logs::captured_logs();
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    let input = json!({"mode": "log", "records": 1200, "bytes": 20_000});
    let report = runtime
        .run_agent(
            &agent,
            wink_host::job::JobRequest::new("req-log-flood", input.to_string()),
            env(),
        )
        .await;
    assert_eq!(output(report), json!({"ok": true}));

    let logs = logs.text();
    let job_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("request_id=req-log-flood"))
        .collect();
    let records: Vec<&str> = job_lines.iter().copied().filter(|l| l.contains("mmmmmmmm")).collect();
    assert_eq!(records.len(), 1000, "records past the limit are dropped");
    for record in &records {
        // The message and the fields are each cut to 4 KiB (and marked);
        // the rest of the line is the span's fields.
        assert!(record.len() < 2 * 4096 + 1024, "{}", record.len());
        assert_eq!(record.matches('…').count(), 2, "{record}");
    }
    let warnings = job_lines
        .iter()
        .filter(|l| l.contains("guest log records over the limit are dropped"))
        .count();
    assert_eq!(warnings, 1, "one warning, not one per dropped record");
}
