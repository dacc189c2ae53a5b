//! Shared benchmark plumbing: where the guests are, percentiles, the report.

#![allow(dead_code, missing_docs)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `wink-host` binary's allocator, so that benchmarks measure what it
/// runs; each benchmark's `main` starts with the binary's tuning of it,
/// `wink_host::allocator::tune()`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A built guest component (`cargo xtask bench` sets `WINK_GUEST_DIR`).
pub fn guest(name: &str) -> PathBuf {
    let dir = std::env::var_os("WINK_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
            target.join("wasm")
        });
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `cargo xtask guests`", path.display());
    path
}

/// The number in environment variable `name`, or `default` when it is
/// unset or not a number.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}

/// p50/p99/mean/min/max of samples, in microseconds.
pub fn summary(samples: &[Duration]) -> serde_json::Value {
    let us = sorted(samples.iter().map(|d| d.as_secs_f64() * 1e6));
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    serde_json::json!({
        "samples": us.len(),
        "p50_us": nearest_rank(&us, 0.50),
        "p99_us": nearest_rank(&us, 0.99),
        "mean_us": round(mean),
        "min_us": nearest_rank(&us, 0.0),
        "max_us": nearest_rank(&us, 1.0),
    })
}

pub fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The median of `values`, rounded like [`round`]; NaN when there are none.
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    nearest_rank(&sorted(values), 0.5)
}

/// The lower and upper quartiles of `values`, rounded like [`round`]: the
/// middle half of the values lies between them.
pub fn quartiles(values: impl Iterator<Item = f64>) -> [f64; 2] {
    let values = sorted(values);
    [nearest_rank(&values, 0.25), nearest_rank(&values, 0.75)]
}

fn sorted(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values
}

/// The value at fraction `at` of `sorted`, rounded; NaN when it is empty.
fn nearest_rank(sorted: &[f64], at: f64) -> f64 {
    let rank = (sorted.len().saturating_sub(1) as f64 * at).round() as usize;
    sorted.get(rank).copied().map_or(f64::NAN, round)
}

/// Runs `first` and `second`, the one or the other going first as `round`
/// is even or odd, so that what one run leaves behind (memory, a warm
/// cache, a busy exporter) weighs on both sides alike over the rounds.
/// Returns their results in the order of the arguments.
pub fn in_turns<A, B>(round: usize, first: impl FnOnce() -> A, second: impl FnOnce() -> B) -> (A, B) {
    if round.is_multiple_of(2) {
        let a = first();
        (a, second())
    } else {
        let b = second();
        (first(), b)
    }
}

/// Write the report to `WINK_BENCH_OUT` (or print only) and echo it.
pub fn write_report(scenario: &str, report: serde_json::Value) {
    let text = serde_json::to_string_pretty(&report).expect("report");
    match std::env::var_os("WINK_BENCH_OUT") {
        Some(path) => {
            std::fs::write(&path, &text).expect("write the bench report");
            eprintln!("{scenario}: wrote {}", PathBuf::from(path).display());
        }
        None => println!("{text}"),
    }
}

/// Resident set size of this process, in KiB, from /proc.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

pub fn machine() -> serde_json::Value {
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "os": std::env::consts::OS,
        "allocator": "mimalloc",
    })
}

/// p50/p99 of `iterations` runs of `bwrap <args>`, or none (with the reason
/// on stderr) when bwrap is missing or cannot run here.
pub fn measure_bwrap<S: AsRef<std::ffi::OsStr>>(
    scenario: &str,
    args: &[S],
    iterations: usize,
) -> Option<serde_json::Value> {
    let spawn = || {
        Command::new("bwrap")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    match spawn() {
        Ok(status) if status.success() => {}
        Ok(status) => {
            eprintln!("{scenario}: bwrap exits with {status} here; skipping the comparison");
            return None;
        }
        Err(_) => {
            eprintln!("{scenario}: bwrap is not installed; skipping the comparison");
            return None;
        }
    }
    let samples: Vec<Duration> = (0..iterations)
        .map(|_| {
            let started = Instant::now();
            let _ = spawn();
            started.elapsed()
        })
        .collect();
    Some(summary(&samples))
}

/// CPU time used so far by this process's threads named `name` (their
/// time on a core, from `/proc/self/task/*/schedstat`); zero where `/proc`
/// cannot tell. Linux keeps 15 bytes of a thread's name, so only those are
/// compared.
pub fn threads_cpu_time(name: &str) -> Duration {
    let name = &name.as_bytes()[..name.len().min(15)];
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter(|task| std::fs::read(task.path().join("comm")).is_ok_and(|comm| comm.trim_ascii_end() == name))
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_nanos)
        .sum()
}

/// Time the hypervisor has taken from this machine's CPUs so far, per CPU
/// (`steal` in `/proc/stat`, over its `cpuN` lines); zero where it cannot
/// tell. On a shared VM, stolen time slows a run down without the run doing
/// anything.
#[allow(unsafe_code)] // std has no sysconf
pub fn machine_steal_per_cpu() -> Duration {
    // SAFETY: sysconf only reads a constant.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Duration::ZERO;
    };
    // "cpu  user nice system idle iowait irq softirq steal ...", in ticks,
    // summed over the "cpuN" lines that follow.
    let total = stat
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(8)?.parse::<u64>().ok());
    let cpus = stat
        .lines()
        .filter(|line| line.starts_with("cpu") && line.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    match (total, u64::try_from(ticks_per_s)) {
        (Some(ticks), Ok(per_s)) if per_s > 0 && cpus > 0 => {
            Duration::from_secs_f64(ticks as f64 / per_s as f64 / cpus as f64)
        }
        _ => Duration::ZERO,
    }
}

/// CPU time used so far by every thread of this process, user and system:
/// steadier than throughput on a shared machine, since time spent waiting
/// for a core does not count.
#[allow(unsafe_code)] // std has no getrusage
pub fn process_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0, "getrusage");
        usage.assume_init()
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}
