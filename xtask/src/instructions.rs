//! `cargo xtask bench throughput --otel --instructions`: what OTLP export
//! adds to the instructions a trivial job takes on the worker's threads,
//! counted under callgrind instead of timed.
//!
//! On a shared VM the timed comparison spreads further than the export
//! costs; an instruction count does not move from run to run. It leaves out
//! what instructions cannot show (cache misses, the kernel's share, the
//! export thread's own work), so it is a floor for the cost, not the cost.
//!
//! Each case runs twice, with more jobs the second time, and a job's count
//! is the difference over the extra jobs: what each side's threads do once
//! (compiling the guest, on whichever thread asks first) drops out.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::ctx::Ctx;
use crate::guests;
use crate::runner::Cmd;

/// The cases counted: concurrency, and the jobs per side of its two runs.
/// Under callgrind a job takes about fifty times as long: each run takes a
/// minute or two.
const CASES: [(usize, [usize; 2]); 2] = [(1, [500, 1_500]), (8, [1_000, 3_000])];

/// The bench's marker functions, one called by each worker thread of each
/// side's runtime as it parks (host/benches/throughput.rs,
/// `mark_worker_thread`).
const LOGS_MARKER: &str = "logs_side_thread";
const EXPORT_MARKER: &str = "export_side_thread";

/// Count, write `T/bench/throughput-instructions.json` and print it.
pub fn run(ctx: &mut Ctx) -> Result<()> {
    ctx.ensure_apt_packages(&[("valgrind", "valgrind")])?;
    guests::ensure_and_build(ctx, guests::DEFAULT_PROFILE)?;
    let bench = bench_executable(ctx)?;
    let dir = ctx.bench_dir().join("callgrind");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing stale {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cases = Vec::new();
    for (concurrency, [fewer, more]) in CASES {
        let count = |jobs: usize| {
            eprintln!(
                "xtask: counting instructions at concurrency {concurrency} in memory, {jobs} jobs, under callgrind..."
            );
            count_run(ctx, &bench, &dir, concurrency, jobs)
        };
        let (before, after) = (count(fewer)?, count(more)?);
        cases.push(compare(concurrency, more - fewer, &before, &after));
    }
    let report = json!({
        "scenario": "throughput-instructions",
        "what": "instructions per trivial job on the worker's async threads, JSON logs alone against JSON logs plus OTLP export (one round of cargo xtask bench throughput --otel, in memory, run twice: per job is the difference over the extra jobs)",
        "counter": "valgrind --tool=callgrind: user-space instructions; not the kernel, cache misses, or the export thread",
        "cases": cases,
    });
    let out = ctx.bench_dir().join("throughput-instructions.json");
    fs::write(&out, format!("{report:#}\n")).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("xtask: results in {} (profiles in {}):", out.display(), dir.display());
    println!("{report:#}");
    Ok(())
}

/// The throughput bench's executable, built.
fn bench_executable(ctx: &Ctx) -> Result<PathBuf> {
    let args = ["bench", "-p", "wink-host", "--bench", "throughput", "--no-run"];
    // Built with cargo's progress shown, then asked where it is.
    ctx.cargo().args(args).run()?;
    let messages = ctx.cargo().args(args).arg("--message-format=json").capture()?;
    executable_in(&messages).context("cargo named no executable for the throughput bench")
}

/// The `executable` of the `throughput` artifact among cargo's JSON messages.
fn executable_in(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "throughput")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
}

/// Run one round of `jobs` jobs at `concurrency` under callgrind and count
/// each side's instructions.
fn count_run(ctx: &Ctx, bench: &Path, dir: &Path, concurrency: usize, jobs: usize) -> Result<Sides> {
    let name = format!("c{concurrency}-{jobs}");
    Cmd::new("valgrind")
        .args(["--tool=callgrind", "--separate-threads=yes"])
        .arg(format!(
            "--callgrind-out-file={}",
            dir.join(format!("{name}.out")).display()
        ))
        .arg(bench)
        .arg("--bench")
        .env("WINK_GUEST_DIR", ctx.wasm_dir())
        .env("WINK_BENCH_OTEL", "1")
        .env("WINK_BENCH_MAILBOX", "memory")
        .env("WINK_BENCH_CONCURRENCY", concurrency.to_string())
        .env("WINK_BENCH_ROUNDS", "1")
        .env("WINK_BENCH_JOBS", jobs.to_string())
        .env("WINK_BENCH_OUT", dir.join(format!("{name}.json")))
        .capture()?;
    count_sides(dir, &format!("{name}.out-"))
}

/// Instructions on each side's async threads.
#[derive(Debug, Default, PartialEq, Eq)]
struct Sides {
    logs: u64,
    export: u64,
    logs_threads: usize,
    export_threads: usize,
}

/// Sum the per-thread profiles in `dir` whose names start with `prefix`
/// by the side whose marker each calls.
fn count_sides(dir: &Path, prefix: &str) -> Result<Sides> {
    let mut sides = Sides::default();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let is_profile = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with(prefix));
        if !is_profile {
            continue;
        }
        let profile = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        add_profile(&mut sides, &profile).with_context(|| format!("in {}", path.display()))?;
    }
    if sides.logs_threads == 0 || sides.export_threads == 0 {
        bail!(
            "found no profile of the logs side's or of the export side's threads (prefix {prefix} in {})",
            dir.display()
        );
    }
    Ok(sides)
}

/// Count one thread's profile to the side it belongs to, if either.
fn add_profile(sides: &mut Sides, profile: &str) -> Result<()> {
    let (count, threads) = if profile.contains(EXPORT_MARKER) {
        (&mut sides.export, &mut sides.export_threads)
    } else if profile.contains(LOGS_MARKER) {
        (&mut sides.logs, &mut sides.logs_threads)
    } else {
        return Ok(());
    };
    *count += total_instructions(profile).context("no `totals:` line")?;
    *threads += 1;
    Ok(())
}

/// A callgrind profile's `totals:` (or, older, `summary:`) count.
fn total_instructions(profile: &str) -> Option<u64> {
    profile.lines().rev().find_map(|line| {
        let count = line.strip_prefix("totals:").or_else(|| line.strip_prefix("summary:"))?;
        count.split_whitespace().next()?.parse().ok()
    })
}

/// Each side's instructions per job, from a run `extra_jobs` longer than
/// the one `before` counted, and what the export adds.
fn compare(concurrency: usize, extra_jobs: usize, before: &Sides, after: &Sides) -> serde_json::Value {
    let per_job = |before: u64, after: u64| after.saturating_sub(before) as f64 / extra_jobs as f64;
    let logs = per_job(before.logs, after.logs);
    let export = per_job(before.export, after.export);
    json!({
        "mailbox": "memory",
        "concurrency": concurrency,
        "extra_jobs": extra_jobs,
        "threads_per_side": [after.logs_threads, after.export_threads],
        "logs_instructions_per_job": logs.round(),
        "export_instructions_per_job": export.round(),
        "export_adds_per_job": (export - logs).round(),
        "export_adds_percent": ((export / logs - 1.0) * 10_000.0).round() / 100.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(marker: &str, total: u64) -> String {
        format!(
            "version: 1\ncmd: bench\nthread: 3\nevents: Ir\nsummary: {total}\nfn=(1) throughput::mark_thread::{marker}\n5 2\n\ntotals: {total}\n"
        )
    }

    #[test]
    fn profiles_count_to_the_side_whose_marker_they_call() {
        let mut sides = Sides::default();
        for (marker, total) in [
            (LOGS_MARKER, 100),
            (EXPORT_MARKER, 70),
            (EXPORT_MARKER, 50),
            ("main", 999),
        ] {
            add_profile(&mut sides, &profile(marker, total)).expect("counted");
        }
        assert_eq!(
            sides,
            Sides {
                logs: 100,
                export: 120,
                logs_threads: 1,
                export_threads: 2
            }
        );
        // Ten more jobs, the export side's taking 12 instructions each, the
        // logs side's 10: what each did once drops out.
        let after = Sides {
            logs: 200,
            export: 240,
            ..sides
        };
        let report = compare(8, 10, &sides, &after);
        assert_eq!(report["logs_instructions_per_job"], 10.0);
        assert_eq!(report["export_adds_per_job"], 2.0);
        assert_eq!(report["export_adds_percent"], 20.0);
    }

    #[test]
    fn a_run_without_both_sides_profiles_is_an_error() {
        let dir = std::env::temp_dir().join(format!("xtask-instructions-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        fs::write(dir.join("c1-500.out-01"), profile(LOGS_MARKER, 10)).expect("profile");
        let err = count_sides(&dir, "c1-500.out-")
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        fs::remove_dir_all(&dir).expect("cleaned up");
        assert_eq!(
            err,
            format!(
                "found no profile of the logs side's or of the export side's threads (prefix c1-500.out- in {})",
                dir.display()
            )
        );
    }

    #[test]
    fn a_profile_without_totals_is_an_error() {
        let mut sides = Sides::default();
        assert!(add_profile(&mut sides, "thread: 1\nfn=(1) logs_side_thread\n").is_err());
    }

    #[test]
    fn the_bench_executable_is_found_among_cargos_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"wink_host"},"executable":null}
{"reason":"compiler-artifact","target":{"name":"throughput"},"executable":"/t/release/deps/throughput-abc"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable_in(messages),
            Some(PathBuf::from("/t/release/deps/throughput-abc"))
        );
        assert_eq!(executable_in(""), None);
    }
}
