//! The metrics a real scrape shows after real jobs, checked by promtool.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use wink_host::runtime::Limits;

#[tokio::test]
async fn jobs_tool_calls_and_limit_hits_are_counted_and_promtool_accepts_the_scrape() {
    let runtime = runtime();
    let agent = load(&runtime, "adversary").await;
    assert!(
        run(&runtime, &agent, r#"{"mode": "echo"}"#, env())
            .await
            .outcome
            .is_ok()
    );
    let mut starved = env();
    starved.limits = Limits {
        fuel: 1_000_000,
        ..test_limits()
    };
    assert!(
        run(&runtime, &agent, r#"{"mode": "spin"}"#, starved)
            .await
            .outcome
            .is_err()
    );
    let missing_tool = r#"{"mode": "tool", "name": "nope", "input": {}}"#;
    assert!(run(&runtime, &agent, missing_tool, env()).await.outcome.is_ok());

    let scrape = runtime.metrics().encode();
    for line in [
        r#"wink_jobs_total{agent="adversary",outcome="succeeded"} 2"#,
        r#"wink_jobs_total{agent="adversary",outcome="limit_exceeded"} 1"#,
        r#"wink_sandbox_limit_hits_total{guest="agent",limit="fuel"} 1"#,
        r#"wink_tool_calls_total{tool="_ungranted",outcome="not_found"} 1"#,
        r#"wink_job_duration_seconds_count{agent="adversary"} 3"#,
        "wink_jobs_active 0",
    ] {
        assert!(scrape.contains(line), "missing {line} in:\n{scrape}");
    }
    promtool_check(&scrape);
}

/// `promtool check metrics` exits 0 for a clean scrape, 3 for lint problems
/// and 1 for parse errors. `cargo xtask test` installs it (Debian `prometheus`).
fn promtool_check(scrape: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: install Debian's `prometheus` (cargo xtask test does)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("write scrape");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool rejected the scrape ({}): {}{}\n{scrape}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
