//! Where replies go besides being stored under their request id: the queue an
//! envelope names in `reply_to`, on the worker's own mailbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use crate::mailbox::{self, Mailbox, MailboxError, Sent};

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
}
