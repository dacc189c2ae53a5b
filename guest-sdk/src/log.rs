//! Structured logging into the host's log pipeline, tagged with the job's ids.
//!
//! Prefer this over `println!`: the host captures stdout and stderr only as
//! opaque text, while these records keep their level and fields.
//!
//! Off wasm32 (native unit tests) records go to stderr instead, because the
//! host imports do not exist there.

/// Severity of a log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the guest recovered from.
    Warn,
    /// A failure.
    Error,
}

/// Emit one record with key-value `fields`.
pub fn emit(level: Level, message: &str, fields: &[(&str, &str)]) {
    imp::emit(level, message, fields);
}

/// Emit a [`Level::Trace`] record.
pub fn trace(message: &str) {
    emit(Level::Trace, message, &[]);
}

/// Emit a [`Level::Debug`] record.
pub fn debug(message: &str) {
    emit(Level::Debug, message, &[]);
}

/// Emit a [`Level::Info`] record.
pub fn info(message: &str) {
    emit(Level::Info, message, &[]);
}

/// Emit a [`Level::Warn`] record.
pub fn warn(message: &str) {
    emit(Level::Warn, message, &[]);
}

/// Emit a [`Level::Error`] record.
pub fn error(message: &str) {
    emit(Level::Error, message, &[]);
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    // Both worlds import the same `log` interface; use whichever is compiled.
    #[cfg(feature = "agent")]
    use crate::agent::bindings::wink::agent::log as wire;
    #[cfg(all(feature = "tool", not(feature = "agent")))]
    use crate::tool::bindings::wink::agent::log as wire;

    pub(super) fn emit(level: Level, message: &str, fields: &[(&str, &str)]) {
        let level = match level {
            Level::Trace => wire::Level::Trace,
            Level::Debug => wire::Level::Debug,
            Level::Info => wire::Level::Info,
            Level::Warn => wire::Level::Warn,
            Level::Error => wire::Level::Error,
        };
        let fields: Vec<wire::Field> = fields
            .iter()
            .map(|(key, value)| wire::Field {
                key: (*key).to_owned(),
                value: (*value).to_owned(),
            })
            .collect();
        wire::emit(level, message, &fields);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Level;

    pub(super) fn emit(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: String = fields.iter().map(|(key, value)| format!(" {key}={value}")).collect();
        eprintln!("[{level:?}] {message}{fields}");
    }
}
