//! Human-friendly quantities in policy files: byte sizes and durations.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes, written as an integer or as `"64MiB"`, `"512KiB"`, `"1GiB"`, `"100B"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub usize);

/// A duration, written as `"250ms"`, `"10s"`, `"5m"`, `"1h"` or an integer number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

/// An integer or a string: how both quantities may be written.
#[derive(Deserialize)]
#[serde(untagged)]
enum Quantity {
    Number(u64),
    Text(String),
}

/// Split `text` into its leading digits and the unit after them.
fn split_quantity(text: &str) -> (&str, &str) {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    text.split_at(split)
}

/// Parse a duration such as `250ms`, `30s`, `5m`, `1h` or a bare number of
/// seconds (the syntax of policy files and of the CLI's duration flags).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = split_quantity(text);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (expected e.g. 500ms, 30s, 5m)"))?;
    let millis = match unit {
        "ms" => Some(value),
        "" | "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        _ => return Err(format!("invalid duration unit in {text:?} (use ms, s, m or h)")),
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

impl ByteSize {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (number, unit) = split_quantity(text);
        let value: usize = number
            .parse()
            .map_err(|_| format!("invalid size {text:?} (expected e.g. 65536, \"64KiB\", \"64MiB\")"))?;
        let multiplier: usize = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(format!("invalid size unit in {text:?} (use B, KiB, MiB or GiB)")),
        };
        value
            .checked_mul(multiplier)
            .map(Self)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Quantity::deserialize(d)? {
            Quantity::Number(n) => usize::try_from(n)
                .map(Self)
                .map_err(|_| serde::de::Error::custom(format!("size {n} is too large"))),
            Quantity::Text(text) => Self::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0 as u64)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Quantity::deserialize(d)? {
            Quantity::Number(seconds) => Ok(Self(Duration::from_secs(seconds))),
            Quantity::Text(text) => parse_duration(&text).map(Self).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_names_bad_ones() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("3 weeks").unwrap_err().contains("\"3 weeks\""));
        assert!(parse_duration("ms").unwrap_err().contains("invalid duration"));
    }

    #[test]
    fn sizes_take_binary_units_and_name_bad_ones() {
        assert_eq!(ByteSize::parse("64MiB"), Ok(ByteSize(64 << 20)));
        assert_eq!(ByteSize::parse("512"), Ok(ByteSize(512)));
        assert_eq!(ByteSize::parse("2 KiB"), Ok(ByteSize(2048)));
        assert!(ByteSize::parse("3MB").unwrap_err().contains("\"3MB\""));
    }
}
