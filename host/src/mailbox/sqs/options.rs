//! The `sqs://` mailbox URL and the SQS queue naming rules.

use url::Url;

use crate::mailbox::MailboxError;

/// The suffix SQS requires on the names of FIFO queues.
pub(super) const FIFO_SUFFIX: &str = ".fifo";

/// Longest SQS queue name, `.fifo` included.
const MAX_QUEUE_NAME: usize = 80;

/// The most receives SQS accepts as a redrive policy's `maxReceiveCount`.
const MAX_RECEIVES_LIMIT: u32 = 1000;

/// How to reach and, optionally, set up an SQS mailbox; parsed from an
/// `sqs://` URL by [`SqsOptions::from_url`] (docs/mailbox.md, "SQS backend").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SqsOptions {
    /// Send requests here instead of the region's AWS endpoint (`?endpoint=`).
    pub endpoint_url: Option<String>,
    /// The AWS region; default: the SDK's chain (`AWS_REGION`, profile) (`?region=`).
    pub region: Option<String>,
    /// The account owning the queues, when it is not the caller's (`?account=`).
    pub account: Option<String>,
    /// The dead-letter queue's name; default: the target of the queue's redrive
    /// policy, else `<queue>-dlq` (`<base>-dlq.fifo` for FIFO queues) (`?dlq=`).
    pub dlq: Option<String>,
    /// A queue that each acked job's reply is sent to (`?replies=`); without
    /// one, replies are dropped: SQS has nowhere to store them.
    pub replies: Option<String>,
    /// Create missing queues (`?create=true`).
    pub create: bool,
    /// With `create`: the redrive policy's `maxReceiveCount` for a queue this
    /// creates; SQS then moves a message that many receives old to the
    /// dead-letter queue by itself (`?max_receives=`).
    pub max_receives: Option<u32>,
}

impl SqsOptions {
    /// Parse `sqs://[?endpoint=URL][&region=R][&account=ID][&dlq=NAME][&replies=NAME][&create=BOOL][&max_receives=N]`.
    pub fn from_url(text: &str) -> Result<Self, MailboxError> {
        let invalid = |reason: String| MailboxError::Invalid(format!("mailbox URL `{text}`: {reason}"));
        let url = Url::parse(text).map_err(|err| invalid(err.to_string()))?;
        if url.scheme() != "sqs" {
            return Err(invalid(format!("scheme `{}` is not sqs", url.scheme())));
        }
        if url.host_str().is_some_and(|host| !host.is_empty()) || !matches!(url.path(), "" | "/") {
            return Err(invalid(
                "an sqs:// URL takes no host or path: give the endpoint as ?endpoint=URL".into(),
            ));
        }
        let mut options = Self::default();
        let mut seen = Vec::new();
        for (key, value) in url.query_pairs() {
            if seen.contains(&key) {
                return Err(invalid(format!("`{key}` is given twice")));
            }
            options.set(&key, &value).map_err(invalid)?;
            seen.push(key);
        }
        if options.max_receives.is_some() && !options.create {
            return Err(invalid(
                "`max_receives` only applies to queues this creates: add `create=true`, or set the redrive policy on the queue"
                    .into(),
            ));
        }
        Ok(options)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "endpoint" => self.endpoint_url = Some(parse_endpoint(value)?),
            "region" => self.region = Some(parse_region(value)?),
            "account" => self.account = Some(parse_account(value)?),
            "dlq" => self.dlq = Some(checked_queue_name(value)?.to_owned()),
            "replies" => self.replies = Some(checked_queue_name(value)?.to_owned()),
            "create" => self.create = parse_bool(key, value)?,
            "max_receives" => self.max_receives = Some(parse_max_receives(value)?),
            other => {
                return Err(format!(
                    "unknown parameter `{other}` (expected endpoint, region, account, dlq, replies, create, max_receives)"
                ));
            }
        }
        Ok(())
    }
}

fn parse_endpoint(value: &str) -> Result<String, String> {
    let url = Url::parse(value).map_err(|err| format!("endpoint `{value}`: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!("endpoint `{value}` is not an http:// or https:// URL"));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

fn parse_region(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(format!("region `{value}` is not an AWS region name like us-east-1"));
    }
    Ok(value.to_owned())
}

fn parse_account(value: &str) -> Result<String, String> {
    if value.len() != 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("account `{value}` is not a 12-digit AWS account id"));
    }
    Ok(value.to_owned())
}

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("`{key}` must be true or false, not `{value}`")),
    }
}

fn parse_max_receives(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(count) if (1..=MAX_RECEIVES_LIMIT).contains(&count) => Ok(count),
        _ => Err(format!(
            "max_receives `{value}` must be a whole number from 1 to {MAX_RECEIVES_LIMIT}"
        )),
    }
}

/// Whether `name` names a FIFO queue.
pub(super) fn is_fifo(name: &str) -> bool {
    name.ends_with(FIFO_SUFFIX)
}

/// `name` if SQS accepts it as a queue name: 1-80 letters, digits, `-` and
/// `_`, plus the `.fifo` suffix of FIFO queues.
pub(super) fn checked_queue_name(name: &str) -> Result<&str, String> {
    let base = name.strip_suffix(FIFO_SUFFIX).unwrap_or(name);
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_');
    if base.is_empty() || name.len() > MAX_QUEUE_NAME || !base.chars().all(allowed) {
        return Err(format!(
            "`{name}` is not an SQS queue name (1-{MAX_QUEUE_NAME} letters, digits, `-`, `_`, and `.fifo` at the end of FIFO queues)"
        ));
    }
    Ok(name)
}

/// The default dead-letter queue of `queue`: `<queue>-dlq`, keeping `.fifo` last.
pub(super) fn default_dlq_name(queue: &str) -> String {
    match queue.strip_suffix(FIFO_SUFFIX) {
        Some(base) => format!("{base}-dlq{FIFO_SUFFIX}"),
        None => format!("{queue}-dlq"),
    }
}

/// The queue name at the end of an SQS queue ARN (`arn:aws:sqs:REGION:ACCOUNT:NAME`).
pub(super) fn queue_name_from_arn(arn: &str) -> Option<(&str, &str)> {
    let mut parts = arn.split(':');
    let (Some("arn"), Some(_partition), Some("sqs"), Some(_region), Some(account), Some(name), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    Some((account, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(url: &str) -> String {
        SqsOptions::from_url(url).expect_err(url).to_string()
    }

    #[test]
    fn a_bare_url_uses_the_sdk_defaults() {
        assert_eq!(SqsOptions::from_url("sqs://").unwrap(), SqsOptions::default());
        assert_eq!(SqsOptions::from_url("sqs:///").unwrap(), SqsOptions::default());
    }

    #[test]
    fn every_parameter_is_read() {
        let options = SqsOptions::from_url(
            "sqs://?endpoint=http://127.0.0.1:5000/&region=eu-west-1&account=123456789012\
             &dlq=jobs-dead&replies=answers&create=true&max_receives=12",
        )
        .unwrap();
        assert_eq!(
            options,
            SqsOptions {
                endpoint_url: Some("http://127.0.0.1:5000".into()),
                region: Some("eu-west-1".into()),
                account: Some("123456789012".into()),
                dlq: Some("jobs-dead".into()),
                replies: Some("answers".into()),
                create: true,
                max_receives: Some(12),
            }
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("sqs://127.0.0.1:5000", "takes no host"),
            ("sqs://?endpoint=ftp://x", "endpoint `ftp://x`"),
            ("sqs://?region=EU", "region `EU`"),
            ("sqs://?account=12", "account `12`"),
            ("sqs://?dlq=a.b", "`a.b` is not an SQS queue name"),
            ("sqs://?create=yes", "not `yes`"),
            ("sqs://?create=true&max_receives=0", "max_receives `0`"),
            ("sqs://?max_receives=3", "add `create=true`"),
            ("sqs://?colour=blue", "unknown parameter `colour`"),
            ("sqs://?region=a&region=b", "`region` is given twice"),
        ];
        for (url, expected) in cases {
            let message = error(url);
            assert!(message.contains(expected), "{url}: {message}");
            assert!(message.contains(url), "{url}: {message}");
        }
    }

    #[test]
    fn queue_names_follow_sqs_rules() {
        assert!(checked_queue_name("jobs_1-a").is_ok());
        assert!(checked_queue_name("jobs.fifo").is_ok());
        for bad in ["", ".fifo", "a:b", "a.b", &"x".repeat(81)] {
            assert!(checked_queue_name(bad).is_err(), "{bad}");
        }
        assert_eq!(default_dlq_name("jobs"), "jobs-dlq");
        assert_eq!(default_dlq_name("jobs.fifo"), "jobs-dlq.fifo");
        assert_eq!(
            queue_name_from_arn("arn:aws:sqs:us-east-1:123456789012:jobs-dlq"),
            Some(("123456789012", "jobs-dlq"))
        );
        assert_eq!(queue_name_from_arn("arn:aws:sns:us-east-1:1:t"), None);
    }
}
