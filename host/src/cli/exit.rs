//! Exit statuses: scripts branch on them, so each failure class has its own.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | failure: a bad value, an unreachable mailbox, an I/O error (a `dlq requeue` the mailbox failed partway through first prints how many it moved) |
//! | 2 | usage: an unknown flag, a missing or conflicting argument, a refused confirmation |
//! | 3 | partial: `enqueue --jsonl` sent the good lines but rejected some; `dlq requeue` moved some dead letters but the queue refused others |
//! | 4 | not found: no stored reply, or requested dead letters absent |

/// A failure that wants a specific exit status; any other error exits 1.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    /// The process exit status.
    pub code: u8,
    /// The one-line reason printed after `error: `.
    pub message: String,
}

impl Exit {
    /// Generic failure.
    pub const FAILURE: u8 = 1;
    /// The command line was wrong (what clap also exits with).
    pub const USAGE: u8 = 2;
    /// Some of a batch was refused; the rest was done.
    pub const PARTIAL: u8 = 3;
    /// What was asked for does not exist.
    pub const NOT_FOUND: u8 = 4;

    /// A failure with exit status `code`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The exit status for an error returned by [`super::Cli::execute`].
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.downcast_ref::<Exit>().map_or(Exit::FAILURE, |exit| exit.code)
}
