//! Where replies go besides being stored under their request id: the queue an
//! envelope names in `reply_to`, on the worker's own mailbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use crate::mailbox::{self, Mailbox, MailboxError, Sent};

/// Opens (once) and remembers the reply queues. Opening through the URL
/// works for every shared backend; an in-process (`memory://`) queue must be
/// registered to be reachable, since each open of `memory://` is a new queue.
#[derive(Debug, Default)]
pub struct ReplyRoutes {
    url: Option<String>,
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

    /// Only registered reply queues; any other `reply_to` is logged and skipped.
    pub fn registered_only() -> Self {
        Self::default()
    }

    /// Send replies for `mailbox.queue()` to `mailbox`.
    pub fn register(self, mailbox: Arc<dyn Mailbox>) -> Self {
        self.opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(mailbox.queue().to_owned(), mailbox);
        self
    }

    fn get(&self, queue: &str) -> Option<Arc<dyn Mailbox>> {
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
        self.opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queue.to_owned(), mailbox.clone());
        Ok(mailbox)
    }

    /// Send `reply` to `queue` under `request_id` (idempotent: a second send
    /// of the same request is a [`Sent::Duplicate`]).
    pub(crate) async fn send(&self, queue: &str, request_id: &str, reply: Bytes) -> Result<Sent, MailboxError> {
        self.mailbox(queue).await?.send(request_id, reply).await
    }
}
