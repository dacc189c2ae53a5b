//! Per-job resource limits and the store-side limiter that enforces them.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The limits one sandboxed instance (an agent job or a tool call) runs under.
///
/// Every limit is enforced by the host; a guest that exceeds one ends with
/// [`LimitExceeded`] naming the limit and its configured value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Fuel (roughly, wasm instructions) the guest may consume.
    pub fuel: u64,
    /// Wall-clock time from start to finish, including time inside host calls.
    #[serde(with = "millis")]
    pub deadline: Duration,
    /// Largest total linear memory, in bytes, across the instance's memories.
    pub memory_bytes: usize,
    /// Largest number of elements in any one table.
    pub table_elements: usize,
    /// Largest output the guest may return, in bytes of JSON text.
    pub output_bytes: usize,
    /// Bytes of stdout and of stderr kept each; the rest is dropped and counted.
    pub stdio_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 10_000_000_000,
            deadline: Duration::from_secs(300),
            memory_bytes: 256 << 20,
            table_elements: 100_000,
            output_bytes: 1 << 20,
            stdio_bytes: 64 << 10,
        }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A limit that a guest can run into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// CPU, measured in fuel.
    Fuel,
    /// Wall-clock deadline.
    Deadline,
    /// Linear memory.
    Memory,
    /// Table elements.
    Table,
    /// Size of the returned output.
    Output,
    /// Wasm call-stack depth.
    Stack,
}

impl Limit {
    /// Stable lower-case name, used in errors, logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Fuel => "fuel",
            Limit::Deadline => "deadline",
            Limit::Memory => "memory",
            Limit::Table => "table",
            Limit::Output => "output",
            Limit::Stack => "stack",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A guest went over one of its limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{limit} limit exceeded ({value})")]
pub struct LimitExceeded {
    /// Which limit.
    pub limit: Limit,
    /// The configured value, with its unit (`"1000000 fuel"`, `"250 ms"`).
    pub value: String,
}

impl LimitExceeded {
    /// The error for `limit` as configured in `limits`.
    pub fn of(limit: Limit, limits: &Limits) -> Self {
        let value = match limit {
            Limit::Fuel => format!("{} fuel", limits.fuel),
            Limit::Deadline => format!("{} ms", limits.deadline.as_millis()),
            Limit::Memory => format!("{} bytes", limits.memory_bytes),
            Limit::Table => format!("{} elements", limits.table_elements),
            Limit::Output => format!("{} bytes", limits.output_bytes),
            Limit::Stack => "wasm stack".to_owned(),
        };
        Self { limit, value }
    }
}

/// Enforces memory and table limits for one store and remembers which limit
/// refused a growth, so a later trap can be attributed to it.
#[derive(Debug)]
pub(crate) struct StoreLimiter {
    memory_bytes: usize,
    table_elements: usize,
    hit: Option<Limit>,
}

impl StoreLimiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            hit: None,
        }
    }

    /// The limit that refused a growth request, if any did.
    pub(crate) fn hit(&self) -> Option<Limit> {
        self.hit
    }
}

impl wasmtime::ResourceLimiter for StoreLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit = Some(Limit::Memory);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.hit = Some(Limit::Table);
            return Ok(false);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn limiter_refuses_growth_past_the_limit_and_remembers_it() -> wasmtime::Result<()> {
        let limits = Limits {
            memory_bytes: 1 << 20,
            ..Limits::default()
        };
        let mut limiter = StoreLimiter::new(&limits);
        assert!(limiter.memory_growing(0, 1 << 20, None)?);
        assert_eq!(limiter.hit(), None);
        assert!(!limiter.memory_growing(1 << 20, (1 << 20) + 65536, None)?);
        assert_eq!(limiter.hit(), Some(Limit::Memory));
        Ok(())
    }

    #[test]
    fn limit_errors_name_the_limit_and_value() {
        let limits = Limits {
            fuel: 42,
            ..Limits::default()
        };
        let err = LimitExceeded::of(Limit::Fuel, &limits);
        assert_eq!(err.to_string(), "fuel limit exceeded (42 fuel)");
    }

    #[test]
    fn limits_parse_from_json_with_millisecond_deadline() -> Result<(), serde_json::Error> {
        let limits: Limits = serde_json::from_str(r#"{"deadline": 250, "fuel": 7}"#)?;
        assert_eq!(limits.deadline, Duration::from_millis(250));
        assert_eq!(limits.fuel, 7);
        assert_eq!(limits.memory_bytes, Limits::default().memory_bytes);
        assert!(serde_json::from_str::<Limits>(r#"{"fuel_typo": 1}"#).is_err());
        Ok(())
    }
}
