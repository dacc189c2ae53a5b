//! What a collector answers to an export it took: an
//! `ExportTraceServiceResponse`, which reports the spans it rejected, if
//! any, in its `partial_success`.

/// Spans the collector rejected from a request it took, and why (the
/// collector may also send only a message, as a warning).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PartialSuccess {
    pub(super) rejected_spans: i64,
    pub(super) error_message: String,
}

/// The partial success `answer` reports; none for a full success (an empty
/// answer, or an empty `partial_success`) or an answer that is not an
/// `ExportTraceServiceResponse`.
pub(super) fn partial_success(answer: &[u8]) -> Option<PartialSuccess> {
    let mut answer = answer;
    let mut found = None;
    while !answer.is_empty() {
        if let (1, Field::Bytes(message)) = next_field(&mut answer)? {
            found = Some(fields_of(message)?);
        }
    }
    found.filter(|partial| partial.rejected_spans != 0 || !partial.error_message.is_empty())
}

/// An `ExportTracePartialSuccess`'s fields.
fn fields_of(message: &[u8]) -> Option<PartialSuccess> {
    let mut message = message;
    let mut partial = PartialSuccess {
        rejected_spans: 0,
        error_message: String::new(),
    };
    while !message.is_empty() {
        match next_field(&mut message)? {
            // int64: two's complement in a varint.
            (1, Field::Varint(rejected)) => partial.rejected_spans = rejected.cast_signed(),
            (2, Field::Bytes(text)) => partial.error_message = String::from_utf8_lossy(text).into_owned(),
            _ => {}
        }
    }
    Some(partial)
}

/// One field's value, as protobuf's wire types carry it.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The next field of `buf` (its number and value), moving past it; none
/// when the bytes are not protobuf.
fn next_field<'a>(buf: &mut &'a [u8]) -> Option<(u64, Field<'a>)> {
    let key = varint(buf)?;
    let value = match key & 7 {
        0 => Field::Varint(varint(buf)?),
        1 => take(buf, 8).map(|_| Field::Fixed)?,
        2 => {
            let len = usize::try_from(varint(buf)?).ok()?;
            Field::Bytes(take(buf, len)?)
        }
        5 => take(buf, 4).map(|_| Field::Fixed)?,
        _ => return None,
    };
    Some((key >> 3, value))
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn take<'a>(buf: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if buf.len() < len {
        return None;
    }
    let (taken, rest) = buf.split_at(len);
    *buf = rest;
    Some(taken)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
    use prost::Message as _;

    use super::*;

    fn answer(partial: Option<(i64, &str)>) -> Vec<u8> {
        ExportTraceServiceResponse {
            partial_success: partial.map(|(rejected_spans, message)| ExportTracePartialSuccess {
                rejected_spans,
                error_message: message.into(),
            }),
        }
        .encode_to_vec()
    }

    #[test]
    fn rejected_spans_and_warnings_are_read_and_full_successes_are_not_reported() {
        let rejected = |rejected_spans, message: &str| PartialSuccess {
            rejected_spans,
            error_message: message.into(),
        };
        for (sent, read) in [
            (
                answer(Some((3, "spans too large"))),
                Some(rejected(3, "spans too large")),
            ),
            (
                answer(Some((0, "deprecated field"))),
                Some(rejected(0, "deprecated field")),
            ),
            (answer(Some((300, ""))), Some(rejected(300, ""))),
            (answer(Some((0, ""))), None),
            (answer(None), None),
        ] {
            assert_eq!(partial_success(&sent), read, "{sent:?}");
        }
    }

    #[test]
    fn unknown_fields_are_skipped_and_other_bytes_are_not_misread() {
        let mut with_unknown = vec![0x10, 0x05, 0x1d, 1, 2, 3, 4];
        with_unknown.extend(answer(Some((2, "no"))));
        assert_eq!(
            partial_success(&with_unknown),
            Some(PartialSuccess {
                rejected_spans: 2,
                error_message: "no".into()
            })
        );
        for garbage in [
            &b"<html>bad gateway</html>"[..],
            b"{\"partialSuccess\":{}}",
            &[0x0a, 0x09, 0x08],
        ] {
            assert_eq!(partial_success(garbage), None, "{garbage:?}");
        }
    }
}
