//! Tuning of mimalloc, the allocator the `wink-host` binary (and its
//! benchmarks) run on.
//!
//! A worker's memory use repeats job after job: each instantiation
//! allocates the same instance state, each job the same futures and
//! buffers. mimalloc returns memory left unused for a second to the OS,
//! and the next burst of jobs faults it back in, one zeroed page at a
//! time: several microseconds a page on the project's VM. In the
//! throughput benchmark, whose two sides take turns of about a second,
//! zeroing those pages took up to half a percent of all CPU samples,
//! landing on whichever side ran after a pause. Keeping freed memory for
//! [`PURGE_DELAY_MS`] rides over the gaps of a bursty queue and still gives
//! memory back once the allocator runs again some seconds after a spike.

use std::ffi::c_long;

use libmimalloc_sys::{mi_option_set_default, mi_option_t};

/// How long mimalloc keeps memory it no longer uses before returning it to
/// the OS, unless `MIMALLOC_PURGE_DELAY` says otherwise (mimalloc's
/// default: 1,000 ms).
pub const PURGE_DELAY_MS: c_long = 10_000;

/// `mi_option_purge_delay` in the mimalloc that libmimalloc-sys vendors
/// (v3's `mimalloc.h`), which libmimalloc-sys does not name.
const MI_OPTION_PURGE_DELAY: mi_option_t = 15;

/// Apply the tuning: call it first thing in `main`, before other threads
/// start. An option that mimalloc read from its environment variable
/// (`MIMALLOC_PURGE_DELAY`, in any case, or its older name
/// `MIMALLOC_RESET_DELAY`; milliseconds, `-1` for never) keeps that value.
#[allow(unsafe_code)] // mimalloc's options are only reachable through its C API
pub fn tune() {
    // SAFETY: mi_option_set_default takes any option index and value (it
    // ignores an index out of range) and only replaces a default, never a
    // value from the environment. It is a plain write, which is why it
    // runs before other threads start; mimalloc reads the option afresh
    // each time it schedules a purge.
    unsafe { mi_option_set_default(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
}

#[cfg(test)]
mod tests {
    use libmimalloc_sys::mi_option_get;

    use super::*;

    #[allow(unsafe_code)] // mimalloc's options are only reachable through its C API
    fn purge_delay_option() -> c_long {
        // SAFETY: reading an option has no preconditions.
        unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }
    }

    fn set_in_environment() -> bool {
        std::env::vars_os().any(|(name, _)| {
            let name = name.to_string_lossy().to_ascii_uppercase();
            name == "MIMALLOC_PURGE_DELAY" || name == "MIMALLOC_RESET_DELAY"
        })
    }

    /// The option index is mimalloc's purge delay: before tuning it holds
    /// that option's default, and tuning sets it.
    #[test]
    fn tuning_sets_mimallocs_purge_delay() {
        if set_in_environment() {
            eprintln!("skipped: the purge delay is set in the environment");
            return;
        }
        assert_eq!(purge_delay_option(), 1_000);
        tune();
        assert_eq!(purge_delay_option(), PURGE_DELAY_MS);
    }

    /// An operator's value wins: this test binary, run again with the
    /// variable set (mimalloc reads it when the process starts).
    #[test]
    fn the_operators_delay_wins_over_ours() {
        let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "allocator::tests::tuning_keeps_the_environments_delay",
                "--ignored",
            ])
            .env("mimalloc_purge_delay", "2500")
            .status()
            .expect("run the test binary");
        assert!(status.success(), "{status}");
    }

    /// Run by [`the_operators_delay_wins_over_ours`] only.
    #[test]
    #[ignore = "needs the variable set when the process starts"]
    fn tuning_keeps_the_environments_delay() {
        if !set_in_environment() {
            return;
        }
        tune();
        assert_eq!(purge_delay_option(), 2_500);
    }
}
