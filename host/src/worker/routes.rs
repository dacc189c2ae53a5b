//! Where replies go besides being stored under their request id: the queue an
//! envelope names in `reply_to`, on the worker's own mailbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::mailbox::{self, Envelope, EnvelopeError, Mailbox, MailboxError, Sent};

/// Reply queues opened on first use remembered at most; past this one is
/// forgotten for each new one (and its connection, if it has its own,
/// closed), so that callers each naming their own queue cannot grow the
/// worker without bound. Registered queues are always kept.
const MAX_REMEMBERED: usize = 1024;

/// Opens (once) and remembers the reply queues: beside the worker's own
/// mailbox, on its connection, where the backend allows (Redis, SQS), else
/// through the URL, which works for every shared backend. An in-process
/// (`memory://`) queue must be registered to be reachable, since each open
/// of `memory://` is a new queue.
#[derive(Debug, Default)]
pub struct ReplyRoutes {
    url: Option<String>,
    home: Option<Arc<dyn Mailbox>>,
    /// Given by [`Self::register`]: the only way to reach an in-process queue.
    registered: HashMap<String, Arc<dyn Mailbox>>,
    /// Opened on first use, at most [`MAX_REMEMBERED`].
    opened: Mutex<HashMap<String, Arc<dyn Mailbox>>>,
    opening: tokio::sync::Mutex<()>,
}

impl ReplyRoutes {
    /// Reply queues opened on the mailbox at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            ..Self::default()
        }
    }

    /// Reply queues beside `home` (the worker's own mailbox, at `url`),
    /// sharing its connection where its backend can, else opened on `url`;
    /// `home`'s own queue is registered.
    pub fn beside(home: Arc<dyn Mailbox>, url: impl Into<String>) -> Self {
        Self {
            home: Some(home.clone()),
            ..Self::new(url)
        }
        .register(home)
    }

    /// Only registered reply queues; any other `reply_to` is logged and skipped.
    pub fn registered_only() -> Self {
        Self::default()
    }

    /// Send replies for `mailbox.queue()` to `mailbox`.
    pub fn register(mut self, mailbox: Arc<dyn Mailbox>) -> Self {
        self.registered.insert(mailbox.queue().to_owned(), mailbox);
        self
    }

    fn get(&self, queue: &str) -> Option<Arc<dyn Mailbox>> {
        if let Some(mailbox) = self.registered.get(queue) {
            return Some(mailbox.clone());
        }
        self.opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(queue)
            .cloned()
    }

    /// The mailbox of reply queue `queue`, opened on first use.
    pub async fn mailbox(&self, queue: &str) -> Result<Arc<dyn Mailbox>, MailboxError> {
        if let Some(mailbox) = self.get(queue) {
            return Ok(mailbox);
        }
        if let Some(sibling) = self.home.as_ref().and_then(|home| home.sibling(queue)) {
            self.remember(queue, sibling.clone());
            return Ok(sibling);
        }
        let Some(url) = &self.url else {
            return Err(MailboxError::Invalid(format!(
                "reply queue `{queue}` is not reachable from this worker"
            )));
        };
        let _one_at_a_time = self.opening.lock().await;
        if let Some(mailbox) = self.get(queue) {
            return Ok(mailbox);
        }
        let mailbox = mailbox::open(url, queue).await?;
        self.remember(queue, mailbox.clone());
        Ok(mailbox)
    }

    fn remember(&self, queue: &str, mailbox: Arc<dyn Mailbox>) {
        let mut opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
        if opened.len() >= MAX_REMEMBERED
            && let Some(forgotten) = opened.keys().next().cloned()
        {
            opened.remove(&forgotten);
        }
        opened.insert(queue.to_owned(), mailbox);
    }

    /// Send `reply` to `queue` under `request_id` (idempotent: a second send
    /// of the same request is a [`Sent::Duplicate`]).
    pub(crate) async fn send(&self, queue: &str, request_id: &str, reply: Bytes) -> Result<Sent, MailboxError> {
        self.mailbox(queue).await?.send(request_id, reply).await
    }
}

/// The queues an envelope's `reply_to` may name (worker option
/// `reply_queues`): queue names, and prefixes ending in `*`; `*` alone
/// permits any queue, and an empty list none.
///
/// Whoever can enqueue a job chooses its `reply_to`, and the worker sends
/// with its own credentials: without a narrower list, a job can put a reply
/// under a request id of its choosing on any queue the worker reaches (a
/// job queue, say). The list keeps replies off the queues outside it; it
/// does not tell callers sharing a prefix apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct ReplyQueues(Vec<String>);

impl ReplyQueues {
    /// Any queue (`*`), the default.
    pub fn any() -> Self {
        Self(vec!["*".to_owned()])
    }

    /// A comma-separated list of names and prefixes (`replies-*,callbacks`);
    /// empty: no queue at all.
    pub fn parse(list: &str) -> Result<Self, String> {
        let patterns: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|pattern| !pattern.is_empty())
            .map(str::to_owned)
            .collect();
        Self::try_from(patterns)
    }

    /// Whether `queue` is one of the permitted queues.
    pub fn permits(&self, queue: &str) -> bool {
        self.0.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => queue.starts_with(prefix),
            None => pattern == queue,
        })
    }

    /// Refuse an envelope whose `reply_to` is not permitted, as an invalid
    /// field: it is dead-lettered before it runs.
    pub fn check(&self, envelope: &Envelope) -> Result<(), EnvelopeError> {
        match &envelope.reply_to {
            Some(queue) if !self.permits(queue) => Err(EnvelopeError::Field {
                field: "reply_to",
                reason: format!(
                    "queue `{queue}` is not one this worker sends replies to (worker option reply_queues: `{self}`)"
                ),
            }),
            _ => Ok(()),
        }
    }
}

impl Default for ReplyQueues {
    fn default() -> Self {
        Self::any()
    }
}

impl TryFrom<Vec<String>> for ReplyQueues {
    type Error = String;

    fn try_from(patterns: Vec<String>) -> Result<Self, String> {
        for pattern in &patterns {
            let name = pattern.strip_suffix('*').unwrap_or(pattern);
            // `*` alone is the one pattern without a name before the star.
            if pattern != "*" {
                mailbox::validate_queue_name(name).map_err(|reason| {
                    format!(
                        "reply queue `{pattern}`: {reason}, optionally followed by `*` to permit every queue \
                         beginning with it (or `*` alone, any queue)"
                    )
                })?;
            }
        }
        Ok(Self(patterns))
    }
}

impl From<ReplyQueues> for Vec<String> {
    fn from(queues: ReplyQueues) -> Self {
        queues.0
    }
}

/// The list as `--reply-queues` takes it, or `none` when it is empty.
impl std::fmt::Display for ReplyQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&self.0.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::MemoryMailbox;

    #[test]
    fn it_remembers_a_bounded_number_of_reply_queues_and_always_its_home() {
        let home: Arc<dyn Mailbox> = Arc::new(MemoryMailbox::new("jobs"));
        let routes = ReplyRoutes::beside(home, "memory://");
        for i in 0..MAX_REMEMBERED + 100 {
            let queue = format!("replies-{i}");
            routes.remember(&queue, Arc::new(MemoryMailbox::new(&queue)));
        }
        assert_eq!(routes.opened.lock().expect("lock").len(), MAX_REMEMBERED);
        assert!(routes.get("jobs").is_some(), "the worker's own queue stays");
        assert!(routes.get(&format!("replies-{}", MAX_REMEMBERED + 99)).is_some());
    }

    #[test]
    fn reply_queues_permit_names_and_prefixes_only() {
        let queues = ReplyQueues::parse(" replies-* , callbacks").expect("valid list");
        assert_eq!(queues.to_string(), "replies-*,callbacks");
        for permitted in ["replies-", "replies-a", "callbacks"] {
            assert!(queues.permits(permitted), "{permitted}");
        }
        for refused in ["replies", "callbacks2", "jobs", "Replies-a"] {
            assert!(!queues.permits(refused), "{refused}");
        }
        assert!(ReplyQueues::any().permits("anything"));
        let none = ReplyQueues::parse(" , ").expect("empty list");
        assert!(!none.permits("replies"));
        assert_eq!(none.to_string(), "none");
        let mixed = ReplyQueues::parse("callbacks,*").expect("valid list");
        assert!(mixed.permits("callbacks") && mixed.permits("anything"));
        let longest = format!("{}*", "q".repeat(128));
        assert!(
            ReplyQueues::parse(&longest)
                .expect("a 128-character prefix")
                .permits(&"q".repeat(128))
        );
    }

    #[test]
    fn reply_queue_patterns_that_name_no_queue_are_refused() {
        for bad in ["a*b", "**", "has space", "slash/", "*x", &"q".repeat(129)] {
            let err = ReplyQueues::parse(bad).expect_err(bad);
            assert!(err.starts_with(&format!("reply queue `{bad}`: ")), "{err}");
        }
    }

    #[test]
    fn an_envelope_naming_a_queue_outside_the_list_is_an_invalid_reply_to() {
        let queues = ReplyQueues::parse("replies-*").expect("valid list");
        let mut envelope = Envelope::new("r-1", "agent.wasm");
        assert!(queues.check(&envelope).is_ok(), "no reply_to");
        envelope.reply_to = Some("replies-7".into());
        assert!(queues.check(&envelope).is_ok());
        envelope.reply_to = Some("jobs".into());
        let err = queues.check(&envelope).expect_err("jobs is not permitted");
        assert!(matches!(err, EnvelopeError::Field { field: "reply_to", .. }), "{err}");
        assert!(
            err.to_string().contains("`jobs`") && err.to_string().contains("`replies-*`"),
            "{err}"
        );
    }
}
