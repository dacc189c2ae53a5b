//! The data a wasmtime store carries for one sandboxed instance.
//!
//! As in wasmtime-wasi, the WASI context is kept beside, not inside, the
//! embedder's own state: `SandboxState` holds what every sandbox needs (WASI,
//! resource table, limiter, deadline, log context) and `H` holds what only
//! one kind of guest needs (an agent's model and session, or nothing for a
//! tool).

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limits::{Limit, StoreLimiter};
use crate::bindings::{log, types};

/// Per-instance store data.
pub(crate) struct SandboxState<H> {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: StoreLimiter,
    pub(crate) deadline: Instant,
    /// Set when the epoch callback stopped the guest at its deadline.
    pub(crate) deadline_hit: bool,
    pub(crate) log: LogContext,
    pub(crate) host: H,
}

impl<H: Send> WasiView for SandboxState<H> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl<H> SandboxState<H> {
    /// The limit that stopped the guest, if a limit did.
    pub(crate) fn limit_hit(&self) -> Option<Limit> {
        if self.deadline_hit {
            Some(Limit::Deadline)
        } else {
            self.limiter.hit()
        }
    }
}

/// Guest log records kept per store (a job, or a tool call); later ones
/// are dropped, with one warning. Until a span ends its records are held
/// as its events, so a guest logging in a loop would otherwise grow the
/// host's memory as much as the logs.
const MAX_GUEST_RECORDS: u32 = 1000;

/// The most bytes kept of a guest record's message, and of its fields
/// rendered together.
const MAX_GUEST_TEXT: usize = 4096;

/// Where a guest's log records go.
#[derive(Debug, Clone)]
pub(crate) struct LogContext {
    /// The job's span: records are emitted as its children.
    pub(crate) span: tracing::Span,
    /// The component that logs.
    component: Arc<str>,
    /// Records emitted so far.
    records: u32,
}

impl<H: Send> types::Host for SandboxState<H> {}

impl<H: Send> log::Host for SandboxState<H> {
    async fn emit(&mut self, level: log::Level, message: String, fields: Vec<log::Field>) -> wasmtime::Result<()> {
        self.log.emit(level, &message, &fields);
        Ok(())
    }
}

impl LogContext {
    pub(crate) fn new(span: tracing::Span, component: Arc<str>) -> Self {
        Self {
            span,
            component,
            records: 0,
        }
    }

    fn emit(&mut self, level: log::Level, message: &str, fields: &[log::Field]) {
        let component = &*self.component;
        self.records = self.records.saturating_add(1);
        if self.records > MAX_GUEST_RECORDS {
            if self.records == MAX_GUEST_RECORDS + 1 {
                tracing::warn!(
                    parent: &self.span,
                    component,
                    limit = MAX_GUEST_RECORDS,
                    "guest log records over the limit are dropped"
                );
            }
            return;
        }
        let message = crate::telemetry::clipped(format_args!("{message}"), MAX_GUEST_TEXT);
        let fields = crate::telemetry::clipped(format_args!("{}", GuestFields(fields)), MAX_GUEST_TEXT);
        macro_rules! guest_event {
            ($level:expr) => {
                tracing::event!(target: "guest", parent: &self.span, $level, component, fields = %fields, "{message}")
            };
        }
        match level {
            log::Level::Trace => guest_event!(tracing::Level::TRACE),
            log::Level::Debug => guest_event!(tracing::Level::DEBUG),
            log::Level::Info => guest_event!(tracing::Level::INFO),
            log::Level::Warn => guest_event!(tracing::Level::WARN),
            log::Level::Error => guest_event!(tracing::Level::ERROR),
        }
    }
}

/// Guest-supplied fields rendered as `key=value` pairs. Guest field names
/// cannot become tracing field names (those are static), so they travel in
/// one field.
struct GuestFields<'a>(&'a [log::Field]);

impl std::fmt::Display for GuestFields<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, field) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={:?}", field.key, field.value)?;
        }
        Ok(())
    }
}
