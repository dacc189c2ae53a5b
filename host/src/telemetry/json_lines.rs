//! JSON log lines, written straight into the line's buffer.
//!
//! The lines are those of tracing-subscriber's JSON format with the current
//! span and the span list (`{"timestamp", "level", "fields", "target",
//! "span", "spans"}`), prefixed with the OpenTelemetry `trace_id` and
//! `span_id` of the span the event belongs to, so that log lines join their
//! trace. tracing-subscriber's format takes detours that cost nearly half
//! of a line (`cargo xtask bench spans`): for every span, on every line,
//! it parses the span's stored fields (already a JSON object, kept by
//! [`JsonFields`]) back into a map and serializes them again, twice for
//! the current span, and it writes through an adaptor that validates every
//! piece as UTF-8. Here a span's stored fields are copied as they are, and
//! the rest is written in place.
//!
//! A span's fields are stored by [`JsonSpanFields`], as the same JSON
//! object [`JsonFields`] stores (members sorted by name), but written in
//! place too: `JsonFields` first collects them into a map of JSON values
//! and then writes that through the same validating adaptor.
//!
//! One difference: `spans` is the chain of the span the event belongs to,
//! also for an event given an explicit parent (tracing-subscriber then lists
//! the current span's chain while `span` names the parent).

use std::fmt::{self, Write as _};
use std::ops::Range;

use opentelemetry::trace::{SpanId, TraceId};
use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime as _, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// The JSON event format of `wink-host`'s logs.
pub(super) struct JsonLines {
    /// The subscriber this format belongs to, to look up OpenTelemetry
    /// contexts (set once the subscriber exists).
    pub(super) dispatch: super::SubscriberSlot,
}

impl JsonLines {
    /// The ids of the innermost span of the event's chain that has a valid
    /// OpenTelemetry context.
    fn trace_ids<S>(&self, ctx: &FmtContext<'_, S, JsonSpanFields>) -> Option<(TraceId, SpanId)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let dispatch = self.dispatch.get()?.upgrade()?;
        ctx.event_scope()?.find_map(|span| {
            let context = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            super::traces::context_ids(&context)
        })
    }
}

impl<S> FormatEvent<S, JsonSpanFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonSpanFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        writer.write_char('{')?;
        if let Some((trace_id, span_id)) = self.trace_ids(ctx) {
            write!(writer, r#""trace_id":"{trace_id}","span_id":"{span_id}","#)?;
        }
        writer.write_str(r#""timestamp":""#)?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, r#"","level":"{}","fields":{{"#, meta.level())?;
        let mut fields = FieldsVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(r#"},"target":"#)?;
        string(&mut writer, meta.target())?;
        if let Some(current) = ctx.event_scope().and_then(|mut scope| scope.next()) {
            writer.write_str(r#","span":"#)?;
            span_object(&mut writer, &current)?;
            writer.write_str(r#","spans":["#)?;
            for (n, span) in current.scope().from_root().enumerate() {
                if n > 0 {
                    writer.write_char(',')?;
                }
                span_object(&mut writer, &span)?;
            }
            writer.write_char(']')?;
        }
        writer.write_str("}\n")
    }
}

/// `span`'s fields as stored by [`JsonSpanFields`] (a JSON object), with
/// its `name` last.
fn span_object<S>(writer: &mut Writer<'_>, span: &SpanRef<'_, S>) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    writer.write_char('{')?;
    let extensions = span.extensions();
    let members = extensions
        .get::<FormattedFields<JsonSpanFields>>()
        .and_then(|fields| fields.strip_prefix('{')?.strip_suffix('}'))
        .unwrap_or_default();
    if !members.is_empty() {
        writer.write_str(members)?;
        writer.write_char(',')?;
    }
    writer.write_str(r#""name":"#)?;
    string(writer, span.name())?;
    writer.write_char('}')
}

/// Stores a span's fields as a JSON object whose members are sorted by
/// name, the last value of a name recorded twice winning: the bytes
/// [`JsonFields`] stores, which the tests compare.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        // Room for a job span's fields, so that they do not grow the
        // buffers a few bytes at a time.
        let mut members = SortedMembers {
            values: String::with_capacity(128),
            members: Vec::with_capacity(8),
        };
        fields.record(&mut members);
        members.write(&mut writer)
    }

    /// Fields recorded after the span was created are merged as
    /// [`JsonFields`] merges them, parsing the stored object: rare enough
    /// (a status, an outcome) not to be worth more code. (A `Debug` value
    /// whose formatting fails is left out when the span is created; here
    /// it panics, as it always did with `JsonFields`.)
    fn add_fields(&self, current: &'writer mut FormattedFields<Self>, fields: &Record<'_>) -> fmt::Result {
        if current.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        let mut merged = FormattedFields::<JsonFields>::new(std::mem::take(&mut current.fields));
        let result = JsonFields::new().add_fields(&mut merged, fields);
        current.fields = merged.fields;
        result
    }
}

/// A span's fields as they are recorded: each value written as JSON into
/// one buffer, to be written out sorted by name.
struct SortedMembers {
    values: String,
    members: Vec<(&'static str, Range<usize>)>,
}

impl SortedMembers {
    fn member(&mut self, name: &'static str, value: impl FnOnce(&mut String) -> fmt::Result) {
        let start = self.values.len();
        // Writing to a `String` cannot fail but for a `Debug` impl that
        // fails, whose field is then left out.
        if value(&mut self.values).is_ok() {
            self.members.push((name, start..self.values.len()));
        } else {
            self.values.truncate(start);
        }
    }

    fn write(mut self, writer: &mut Writer<'_>) -> fmt::Result {
        // Stable, so that of two values of one name the last one recorded
        // comes last, and is the one kept.
        self.members.sort_by_key(|(name, _)| *name);
        writer.write_char('{')?;
        let mut first = true;
        for (n, (name, value)) in self.members.iter().enumerate() {
            if self.members.get(n + 1).is_some_and(|(next, _)| next == name) {
                continue;
            }
            if !std::mem::take(&mut first) {
                writer.write_char(',')?;
            }
            string(writer, name)?;
            writer.write_char(':')?;
            writer.write_str(&self.values[value.clone()])?;
        }
        writer.write_char('}')
    }
}

impl Visit for SortedMembers {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field.name(), |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field.name(), |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field.name(), |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.member(field.name(), |w| json_f64(w, value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field.name(), |w| string(w, value));
    }

    /// An array of numbers, as serde_json makes of bytes.
    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.member(field.name(), |w| {
            w.write_char('[')?;
            for (n, byte) in value.iter().enumerate() {
                if n > 0 {
                    w.write_char(',')?;
                }
                write!(w, "{byte}")?;
            }
            w.write_char(']')
        });
    }

    /// As [`JsonFields`] does: a raw identifier's `r#` is dropped, and
    /// fields of the `log` crate's metadata are left out.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.member(name, |w| debug_string(w, value));
    }
}

/// Writes an event's fields as the members of a JSON object, as
/// tracing-serde does: numbers and booleans as such, everything else as a
/// string (`Debug` for values that are not strings).
struct FieldsVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl FieldsVisitor<'_, '_> {
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.writer.write_char(',')?;
            }
            string(self.writer, field.name())?;
            self.writer.write_char(':')?;
            value(self.writer)
        })();
    }
}

impl Visit for FieldsVisitor<'_, '_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.member(field, |w| json_f64(w, value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| string(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| debug_string(w, value));
    }
}

/// `value` as serde_json writes an `f64` (shortest round trip, `null` for
/// NaN and infinities), not as Rust's `Display` does.
fn json_f64(writer: &mut impl fmt::Write, value: f64) -> fmt::Result {
    match serde_json::to_string(&value) {
        Ok(number) => writer.write_str(&number),
        Err(_) => writer.write_str("null"),
    }
}

/// `value`'s `Debug` text as a JSON string.
fn debug_string(writer: &mut impl fmt::Write, value: &dyn fmt::Debug) -> fmt::Result {
    writer.write_char('"')?;
    write!(Escaping(&mut *writer), "{value:?}")?;
    writer.write_char('"')
}

/// `text` as a JSON string.
fn string(writer: &mut impl fmt::Write, text: &str) -> fmt::Result {
    writer.write_char('"')?;
    Escaping(&mut *writer).write_str(text)?;
    writer.write_char('"')
}

/// Escapes what it is given as the inside of a JSON string, as serde_json
/// does: quotes, backslashes and control characters only.
struct Escaping<'a, W: fmt::Write + ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let bytes = text.as_bytes();
        let mut clean_from = 0;
        while let Some(at) = next_to_escape(bytes, clean_from) {
            // Every byte escaped is ASCII, so `at` is a char boundary.
            self.0.write_str(&text[clean_from..at])?;
            match bytes[at] {
                b'"' => self.0.write_str("\\\"")?,
                b'\\' => self.0.write_str("\\\\")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\r' => self.0.write_str("\\r")?,
                b'\t' => self.0.write_str("\\t")?,
                0x08 => self.0.write_str("\\b")?,
                0x0c => self.0.write_str("\\f")?,
                byte => write!(self.0, "\\u{byte:04x}")?,
            }
            clean_from = at + 1;
        }
        self.0.write_str(&text[clean_from..])
    }
}

/// Where in `bytes`, from `from` on, the next byte JSON escapes is (a
/// quote, a backslash or a control character). Most text has none, so it
/// is looked for eight bytes at a time, each test exact for "any of the
/// eight".
fn next_to_escape(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let any_below = |word: u64, limit: u8| word.wrapping_sub(ONES * u64::from(limit)) & !word & HIGHS != 0;
    let any_equal = |word: u64, byte: u8| any_below(word ^ (ONES * u64::from(byte)), 1);
    let mut at = from;
    while let Some(chunk) = bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        let word = u64::from_ne_bytes(*chunk);
        if any_below(word, 0x20) || any_equal(word, b'"') || any_equal(word, b'\\') {
            break;
        }
        at += 8;
    }
    let rest = bytes.get(at..)?;
    rest.iter()
        .position(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\')
        .map(|found| at + found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::TestSink;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// The lines of tracing-subscriber's JSON format and of [`JsonLines`]
    /// (without ids: no OpenTelemetry layer here) for the same events.
    fn both_formats(events: impl Fn()) -> (String, String) {
        let theirs = TestSink::default();
        let ours = TestSink::default();
        let (theirs_writer, ours_writer) = (theirs.clone(), ours.clone());
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(move || theirs_writer.clone()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonSpanFields)
                    .event_format(JsonLines {
                        dispatch: Default::default(),
                    })
                    .with_writer(move || ours_writer.clone()),
            );
        tracing::subscriber::with_default(subscriber, events);
        (theirs.text(), ours.text())
    }

    /// The text of each line after its timestamp, which differs by the
    /// time each layer took it.
    fn after_timestamps(text: &str) -> Vec<&str> {
        text.lines()
            .map(|line| line.split_once(r#"","level""#).map_or(line, |(_, rest)| rest))
            .collect()
    }

    #[test]
    fn lines_are_tracing_subscribers_json_lines() {
        let (theirs, ours) = both_formats(|| {
            tracing::info!("outside any span");
            let delivery = tracing::info_span!(
                "worker_job",
                request_id = "r-1",
                attempt = 1_i64,
                otel.status_code = tracing::field::Empty
            );
            let _delivery = delivery.enter();
            let job = tracing::info_span!("job", component = %"file-digest", gen_ai.agent.name = "a \"quoted\" name");
            let _job = job.enter();
            job.record("gen_ai.agent.name", "renamed");
            delivery.record("otel.status_code", "error");
            tracing::warn!(
                elapsed_us = 12_u64,
                delta = -3_i64,
                ratio = 0.1_f64,
                whole = 1.0_f64,
                nan = f64::NAN,
                ok = true,
                debug = ?Some("x"),
                text = "tab\there, newline\nthere, bell\u{7}, \\ and \u{1f}",
                unicode = "é ✓",
                "job succeeded after {} tries",
                2
            );
            let odd = tracing::info_span!(
                "odd",
                zeta = 2.5_f64,
                alpha = u64::MAX,
                r#type = ?"raw",
                bytes = &b"ab"[..],
                twice = 1_i64,
                twice = "second",
                unset = tracing::field::Empty
            );
            odd.in_scope(|| tracing::info!("sorted fields"));
            let empty = tracing::info_span!("empty");
            empty.in_scope(|| tracing::error!(error = %std::io::Error::other("disk full"), "no fields above"));
        });
        assert_eq!(theirs.lines().count(), 4, "{theirs}");
        assert_eq!(after_timestamps(&ours), after_timestamps(&theirs));
        for line in ours.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("a JSON line");
        }
    }

    #[test]
    fn escapes_as_serde_json_does() {
        let text = "\"\\\u{0}\u{8}\u{c}\n\r\t\u{1b}\u{7f}é";
        let mut texts = vec![
            text.to_owned(),
            String::new(),
            "plain ascii, long enough for words ✓".into(),
        ];
        // Each escaped byte at each place of a text longer than two words,
        // and in a clean text's last word.
        for special in ['"', '\\', '\n', '\u{1}', '\u{1f}'] {
            for at in 0..20 {
                let mut text: Vec<char> = "abcdefghijklmnopqrst".chars().collect();
                text[at] = special;
                texts.push(text.into_iter().collect());
            }
        }
        for text in &texts {
            let mut ours = String::new();
            string(&mut ours, text).expect("written");
            assert_eq!(ours, serde_json::to_string(text).expect("serialized"), "{text:?}");
        }
    }
}
