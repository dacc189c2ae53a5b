//! What SQS holds against a queue's `MaximumMessageSize`, so that every
//! message this backend sends can also be dead-lettered. SQS refuses a
//! message larger than its queue takes; a dead letter it refused would
//! leave its message to come back, fail again and be refused again, for as
//! long as the queue keeps it.

use std::collections::HashMap;

use aws_sdk_sqs::types::MessageAttributeValue;

/// Bytes a send keeps free below its queue's `MaximumMessageSize` for the
/// attributes a dead-letter copy adds, each counted as name + type + value:
/// its message id (15 + 6 + 36, a UUID), attempts (13 + 6 + at most 10
/// digits), time of death (12 + 6 + 13) and reason kind (14 + 6 + at most
/// 28, `unsupported_envelope_version`), about 175 bytes. The reason's
/// message takes what room is left.
pub(super) const DEAD_LETTER_ROOM: usize = 512;

/// The size SQS counts: the body and each attribute's name, data type and
/// value, in bytes.
pub(super) fn message_size(body: &str, attributes: &HashMap<String, MessageAttributeValue>) -> usize {
    body.len()
        + attributes
            .iter()
            .map(|(name, value)| attribute_size(name, value))
            .sum::<usize>()
}

fn attribute_size(name: &str, value: &MessageAttributeValue) -> usize {
    name.len()
        + value.data_type().len()
        + value.string_value().map_or(0, str::len)
        + value.binary_value().map_or(0, |blob| blob.as_ref().len())
}

/// The longest value a `String` attribute named `name` can have in a
/// message of `size` bytes that must stay within `max`.
pub(super) fn text_room(name: &str, size: usize, max: usize) -> usize {
    max.saturating_sub(size + name.len() + "String".len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_counts_the_body_and_each_attributes_name_type_and_value() {
        let attributes = HashMap::from([
            (
                "wink-request-id".to_owned(),
                super::super::text_attr("r1").expect("attribute"),
            ),
            (
                "blob".to_owned(),
                MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(aws_smithy_types::Blob::new(vec![0; 10]))
                    .build()
                    .expect("attribute"),
            ),
        ]);
        assert_eq!(message_size("héllo", &attributes), 6 + (15 + 6 + 2) + (4 + 6 + 10));
        assert_eq!(message_size("", &HashMap::new()), 0);
    }

    #[test]
    fn text_room_is_what_fits_beside_the_name_and_type() {
        assert_eq!(text_room("kind", 1000, 1024), 24 - 4 - 6);
        assert_eq!(text_room("kind", 1020, 1024), 0, "no room at all");
    }
}
