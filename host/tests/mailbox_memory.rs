//! The shared mailbox contract (tests/common/mailbox_contract.rs) against the
//! in-memory reference backend, so the contract itself is checked against
//! the model it was written from.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::mailbox_contract::MailboxFactory;
use wink_host::mailbox::{Mailbox, MemoryMailbox};

struct MemoryQueues;

#[async_trait]
impl MailboxFactory for MemoryQueues {
    async fn fresh(&self, reply_ttl: Duration) -> Arc<dyn Mailbox> {
        Arc::new(MemoryMailbox::with_reply_ttl("contract", reply_ttl))
    }
}

mailbox_contract_tests!(MemoryQueues);
