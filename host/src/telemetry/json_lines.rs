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
//! One difference: `spans` is the chain of the span the event belongs to,
//! also for an event given an explicit parent (tracing-subscriber then lists
//! the current span's chain while `span` names the parent).

use std::fmt::{self, Write as _};
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::{SpanId, TraceId};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime as _, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// The JSON event format of `wink-host`'s logs.
pub(super) struct JsonLines {
    /// The subscriber this format belongs to, to look up OpenTelemetry
    /// contexts (set once the subscriber exists).
    pub(super) dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl JsonLines {
    /// The ids of the innermost span of the event's chain that has a valid
    /// OpenTelemetry context.
    fn trace_ids<S>(&self, ctx: &FmtContext<'_, S, JsonFields>) -> Option<(TraceId, SpanId)>
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

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
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

/// `span`'s fields as stored by [`JsonFields`] (a JSON object), with its
/// `name` last.
fn span_object<S>(writer: &mut Writer<'_>, span: &SpanRef<'_, S>) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    writer.write_char('{')?;
    let extensions = span.extensions();
    let members = extensions
        .get::<FormattedFields<JsonFields>>()
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
        // serde_json's float formatting (shortest round trip, `null` for
        // NaN and infinities), not Rust's `Display`.
        self.member(field, |w| match serde_json::to_string(&value) {
            Ok(number) => w.write_str(&number),
            Err(_) => w.write_str("null"),
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| string(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| {
            w.write_char('"')?;
            write!(Escaping(w), "{value:?}")?;
            w.write_char('"')
        });
    }
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
        let mut clean_from = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escaped = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            // Every byte escaped is ASCII, so `at` is a char boundary.
            self.0.write_str(&text[clean_from..at])?;
            if escaped.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escaped)?;
            }
            clean_from = at + 1;
        }
        self.0.write_str(&text[clean_from..])
    }
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
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonLines {
                        dispatch: Arc::new(OnceLock::new()),
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
            let empty = tracing::info_span!("empty");
            empty.in_scope(|| tracing::error!(error = %std::io::Error::other("disk full"), "no fields above"));
        });
        assert_eq!(theirs.lines().count(), 3, "{theirs}");
        assert_eq!(after_timestamps(&ours), after_timestamps(&theirs));
        for line in ours.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("a JSON line");
        }
    }

    #[test]
    fn escapes_as_serde_json_does() {
        let text = "\"\\\u{0}\u{8}\u{c}\n\r\t\u{1b}\u{7f}é";
        let mut ours = String::new();
        string(&mut ours, text).expect("written");
        assert_eq!(ours, serde_json::to_string(text).expect("serialized"));
    }
}
