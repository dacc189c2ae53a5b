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
//! memory back some seconds after a spike.

use std::ffi::c_long;

use libmimalloc_sys::{mi_option_set, mi_option_t};

/// How long mimalloc keeps memory it no longer uses before returning it to
/// the OS, unless [`PURGE_DELAY_VAR`] says otherwise (mimalloc's default:
/// 1,000 ms).
pub const PURGE_DELAY_MS: c_long = 10_000;

/// mimalloc's own variable for the purge delay, in milliseconds (`-1`:
/// never); when set, it wins over [`PURGE_DELAY_MS`].
pub const PURGE_DELAY_VAR: &str = "MIMALLOC_PURGE_DELAY";

/// `mi_option_purge_delay` in the mimalloc that libmimalloc-sys vendors
/// (v3's `mimalloc.h`), which libmimalloc-sys does not name.
const MI_OPTION_PURGE_DELAY: mi_option_t = 15;

/// Apply the tuning, once, at the start of `main`. Does nothing to an
/// option its mimalloc variable sets.
pub fn tune() {
    if let Some(delay) = purge_delay(std::env::var_os(PURGE_DELAY_VAR).is_some()) {
        set_purge_delay(delay);
    }
}

/// The purge delay to set, when the operator has not set one.
fn purge_delay(set_by_operator: bool) -> Option<c_long> {
    (!set_by_operator).then_some(PURGE_DELAY_MS)
}

#[allow(unsafe_code)] // mimalloc's options are only reachable through its C API
fn set_purge_delay(milliseconds: c_long) {
    // SAFETY: mi_option_set takes any option index and value (it ignores
    // an index out of range), and mimalloc reads the option afresh each
    // time it schedules a purge, so setting it while threads allocate is
    // what it is meant for.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, milliseconds) }
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

    #[test]
    fn the_operators_delay_wins_over_ours() {
        assert_eq!(purge_delay(false), Some(PURGE_DELAY_MS));
        assert_eq!(purge_delay(true), None);
    }

    /// The option index is mimalloc's purge delay: before tuning it holds
    /// that option's default (or the operator's value), and tuning sets it.
    #[test]
    fn tuning_sets_mimallocs_purge_delay() {
        let operator = std::env::var(PURGE_DELAY_VAR).ok().and_then(|value| value.parse().ok());
        assert_eq!(purge_delay_option(), operator.unwrap_or(1_000));
        tune();
        assert_eq!(purge_delay_option(), operator.unwrap_or(PURGE_DELAY_MS));
    }
}
