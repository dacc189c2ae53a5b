//! The Redis mailbox: lists and sorted sets driven by Lua scripts, so every
//! state change is one atomic step on the server (docs/mailbox.md, "Redis
//! backend").
//!
//! All keys of a queue share the hash tag `{wink:QUEUE}` and every script
//! declares every key it touches, so the same scripts run on one server, on
//! Redis Cluster and behind proxies that check KEYS. Lease deadlines come from
//! the server's `TIME`, so workers' clocks do not matter. Claimers that find
//! nothing block on a wake-up list (BLPOP, on a connection of their own)
//! instead of polling.

mod connection;
mod ledger;

use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use ::redis::{FromRedisValue, Script, ScriptInvocation, Value};
use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use tokio::time::Instant;

pub(crate) use connection::redact;
pub use ledger::{DEFAULT_USAGE_TTL, RedisUsageLedger};

use self::connection::{Connection, RedisUrl, mailbox_error};
use super::memory::DEFAULT_REPLY_TTL;
use super::{
    Acked, DeadLetter, DeadLetterReason, DeadSelection, Delivery, Depth, Lease, Mailbox, MailboxError, PurgeScope,
    Reply, Sent, validate_queue_name, validate_request_id,
};

/// A script: the shared prelude (key names and helpers) followed by the file's body.
macro_rules! queue_script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("redis/prelude.lua"),
            include_str!(concat!("redis/", $file))
        ))
    };
}

/// The queue scripts, hashed once per process (EVALSHA, loaded on NOSCRIPT).
struct Scripts {
    send: Script,
    claim: Script,
    extend: Script,
    ack: Script,
    nack: Script,
    dead_letter: Script,
    reap: Script,
    depth: Script,
    purge: Script,
    dead_letters: Script,
    requeue_dead: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    send: queue_script!("send.lua"),
    claim: queue_script!("claim.lua"),
    extend: queue_script!("extend.lua"),
    ack: queue_script!("ack.lua"),
    nack: queue_script!("nack.lua"),
    dead_letter: queue_script!("dead_letter.lua"),
    reap: queue_script!("reap.lua"),
    depth: queue_script!("depth.lua"),
    purge: queue_script!("purge.lua"),
    dead_letters: queue_script!("dead_letters.lua"),
    requeue_dead: queue_script!("requeue_dead.lua"),
});

/// Scripts move at most this many messages per call (`MOVE_LIMIT` in
/// prelude.lua); bulk operations call again until they are done.
const MOVE_LIMIT: u64 = 1000;
/// Most messages one claim returns, and most items per ack script call.
const MAX_BATCH: usize = 1000;
/// Leases and delays are capped so deadlines stay exact in Lua's doubles.
const MAX_DURATION_MS: u64 = 10 * 365 * 24 * 60 * 60 * 1000;
/// Extra time allowed for a BLPOP's answer beyond its own timeout.
const BLOCK_GRACE: Duration = Duration::from_secs(2);
/// Pause after a failed wait before claiming again (avoids a hot loop).
const BLOCK_RETRY: Duration = Duration::from_millis(50);
/// Longest pause between claim attempts while Redis is unreachable.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(1);

/// Suffixes of the keys every queue script receives, in prelude.lua's order.
const QUEUE_KEYS: [&str; 10] = [
    "ready", "jobs", "attempts", "lease", "inflight", "delayed", "dlq", "dead", "wake", "seq",
];
const WAKE_KEY: usize = 8;

/// The key names of one queue.
#[derive(Debug)]
struct QueueKeys {
    /// `{wink:QUEUE}`: the hash tag that keeps the queue in one cluster slot.
    prefix: String,
    fixed: [String; QUEUE_KEYS.len()],
}

impl QueueKeys {
    fn new(queue: &str) -> Self {
        let prefix = format!("{{wink:{queue}}}");
        let fixed = QUEUE_KEYS.map(|suffix| format!("{prefix}:{suffix}"));
        Self { prefix, fixed }
    }

    fn reply(&self, request_id: &str) -> String {
        format!("{}:reply:{request_id}", self.prefix)
    }

    /// An invocation of `script` with the queue's keys declared.
    fn invoke<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for key in &self.fixed {
            invocation.key(key);
        }
        invocation
    }
}

/// A [`Mailbox`] on Redis or Redis Cluster.
pub struct RedisMailbox {
    queue: String,
    keys: QueueKeys,
    url: RedisUrl,
    conn: Connection,
    reply_ttl: Duration,
    /// Idle connections for blocking waits; a claimer takes one (or opens
    /// one) and gives it back only after a clean answer.
    blockers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for RedisMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMailbox")
            .field("url", &self.url.display)
            .field("queue", &self.queue)
            .field("reply_ttl", &self.reply_ttl)
            .finish_non_exhaustive()
    }
}

/// What one claim script call found.
enum Claimed {
    Batch(Vec<Delivery>),
    /// Nothing ready; something may become ready after this long.
    Nothing {
        next_change: Option<Duration>,
    },
}

/// The dead-letter reason as dead_letter.lua stores it.
#[derive(Deserialize)]
struct StoredReason {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    dead_at_ms: u64,
}

impl RedisMailbox {
    /// Connect to queue `queue` at `url`: `redis://[user:pass@]host:port[/db]`,
    /// `rediss://` for TLS, or `redis+cluster://host:port,host:port` (and
    /// `rediss+cluster://`) for Redis Cluster. `?reply_ttl=<duration>` sets
    /// how long replies are kept (default 24h).
    pub async fn open(url: &str, queue: &str) -> Result<Self, MailboxError> {
        validate_queue_name(queue).map_err(MailboxError::Invalid)?;
        let url = RedisUrl::parse(url)?;
        let conn = url.connect().await?;
        Ok(Self {
            queue: queue.to_owned(),
            keys: QueueKeys::new(queue),
            reply_ttl: url.reply_ttl.unwrap_or(DEFAULT_REPLY_TTL),
            url,
            conn,
            blockers: Mutex::new(Vec::new()),
        })
    }

    /// Keep replies (and refuse re-sent request ids) for `reply_ttl` after the ack.
    pub fn with_reply_ttl(mut self, reply_ttl: Duration) -> Self {
        self.reply_ttl = reply_ttl.max(Duration::from_millis(1));
        self
    }

    /// How long replies are kept.
    pub fn reply_ttl(&self) -> Duration {
        self.reply_ttl
    }

    async fn run<T: FromRedisValue>(&self, invocation: &ScriptInvocation<'_>) -> Result<T, MailboxError> {
        let mut conn = self.conn.clone();
        invocation.invoke_async(&mut conn).await.map_err(mailbox_error)
    }

    /// Call `script` with `args` until it moves fewer than [`MOVE_LIMIT`]
    /// messages (nothing left to do); the total moved.
    async fn run_to_completion(&self, script: &Script, args: &[&str]) -> Result<u64, MailboxError> {
        self.run_to_completion_counted(script, args)
            .await
            .map_err(|(_, err)| err)
    }

    /// [`Self::run_to_completion`], whose error comes with the count of
    /// what the runs before it moved.
    async fn run_to_completion_counted(&self, script: &Script, args: &[&str]) -> Result<u64, (u64, MailboxError)> {
        let mut invocation = self.keys.invoke(script);
        for arg in args {
            invocation.arg(*arg);
        }
        let mut total = 0;
        loop {
            let moved: u64 = self.run(&invocation).await.map_err(|err| (total, err))?;
            total += moved;
            if moved < MOVE_LIMIT {
                return Ok(total);
            }
        }
    }

    async fn claim_once(&self, max: usize, lease_ms: u64) -> Result<Claimed, MailboxError> {
        let mut invocation = self.keys.invoke(&SCRIPTS.claim);
        invocation.arg(max).arg(lease_ms);
        let reply: Vec<Value> = self.run(&invocation).await?;
        let mut fields = reply.into_iter();
        let hint: i64 = field(&mut fields)?;
        if fields.len() == 0 {
            let next_change = u64::try_from(hint).ok().map(Duration::from_millis);
            return Ok(Claimed::Nothing { next_change });
        }
        let token: String = field(&mut fields)?;
        let lease_expires_at_ms: u64 = field(&mut fields)?;
        let mut batch = Vec::with_capacity(fields.len() / 3);
        while fields.len() > 0 {
            let message_id: String = field(&mut fields)?;
            let (enqueued_at_ms, payload) = stored_job(&message_id, field(&mut fields)?)?;
            batch.push(Delivery {
                lease: Lease {
                    message_id,
                    token: token.clone(),
                },
                payload,
                attempt: field(&mut fields)?,
                enqueued_at_ms,
                lease_expires_at_ms,
            });
        }
        Ok(Claimed::Batch(batch))
    }

    /// Block until a wake-up marker arrives or `block` passes. Failures end
    /// the wait early; the caller claims again, which reports a lasting outage.
    async fn wait_for_wake(&self, block: Duration) {
        let mut conn = match self.take_blocker().await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(queue = %self.queue, error = %err, "cannot open a connection to wait for jobs");
                tokio::time::sleep(block.min(BLOCK_RETRY)).await;
                return;
            }
        };
        let seconds = block.max(Duration::from_millis(1)).as_secs_f64();
        let mut blpop = ::redis::cmd("BLPOP");
        blpop.arg(&self.keys.fixed[WAKE_KEY]).arg(seconds);
        let answer = tokio::time::timeout(block + BLOCK_GRACE, blpop.query_async::<Value>(&mut conn)).await;
        match answer {
            Ok(Ok(_)) => self.blockers.lock().unwrap_or_else(PoisonError::into_inner).push(conn),
            // A server restart, failover or CLIENT KILL unblocks with an
            // error: drop the connection and let the next wait open a new one.
            Ok(Err(err)) => {
                tracing::debug!(queue = %self.queue, error = %err, "wait for jobs interrupted");
                tokio::time::sleep(BLOCK_RETRY).await;
            }
            Err(_) => tracing::debug!(queue = %self.queue, "wait for jobs timed out; reconnecting"),
        }
    }

    async fn take_blocker(&self) -> Result<Connection, MailboxError> {
        let idle = self.blockers.lock().unwrap_or_else(PoisonError::into_inner).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.url.connect_blocking().await,
        }
    }

    /// Run one send script call over `messages` (all with valid request ids).
    async fn send_chunk(
        &self,
        messages: Vec<&(String, Bytes)>,
    ) -> Result<Vec<Result<Sent, MailboxError>>, MailboxError> {
        let mut invocation = self.keys.invoke(&SCRIPTS.send);
        for (request_id, payload) in &messages {
            invocation
                .key(self.keys.reply(request_id))
                .arg(request_id)
                .arg(payload.as_ref());
        }
        let codes: Vec<i64> = self.run(&invocation).await?;
        answers(codes, messages.len(), "send", |code, _| match code {
            1 => Ok(Sent::Enqueued),
            _ => Ok(Sent::Duplicate),
        })
    }

    /// Run one ack script call over `acks` (all with valid request ids).
    async fn ack_chunk(&self, acks: Vec<&(Lease, Reply)>) -> Result<Vec<Result<Acked, MailboxError>>, MailboxError> {
        let mut invocation = self.keys.invoke(&SCRIPTS.ack);
        invocation.arg(ms(self.reply_ttl).max(1));
        for (lease, reply) in &acks {
            invocation
                .key(self.keys.reply(&reply.request_id))
                .arg(&lease.message_id)
                .arg(&lease.token)
                .arg(reply.body.as_ref());
        }
        let codes: Vec<i64> = self.run(&invocation).await?;
        answers(codes, acks.len(), "ack", |code, index| match code {
            1 => Ok(Acked::Replied),
            2 => Ok(Acked::AlreadyReplied),
            _ => Err(lease_lost(&acks[index].0)),
        })
    }

    /// Run a script that finishes a lease and answers 0 when it is not held.
    async fn finish(&self, script: &Script, lease: &Lease, args: &[&[u8]]) -> Result<i64, MailboxError> {
        let mut invocation = self.keys.invoke(script);
        invocation.arg(&lease.message_id).arg(&lease.token);
        for arg in args {
            invocation.arg(*arg);
        }
        match self.run(&invocation).await? {
            0 => Err(lease_lost(lease)),
            answer => Ok(answer),
        }
    }
}

/// Run `run` over `items` in script-sized chunks, skipping the items whose
/// check failed (they answer their error); one answer per item, in order.
async fn in_batches<'a, I, T, F, Fut>(
    items: &'a [I],
    checked: impl Iterator<Item = Option<MailboxError>>,
    run: F,
) -> Result<Vec<Result<T, MailboxError>>, MailboxError>
where
    F: Fn(Vec<&'a I>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Result<T, MailboxError>>, MailboxError>>,
{
    let mut answers: Vec<Option<Result<T, MailboxError>>> = checked.map(|err| err.map(Err)).collect();
    let valid: Vec<usize> = (0..items.len()).filter(|&index| answers[index].is_none()).collect();
    for chunk in valid.chunks(MAX_BATCH) {
        let results = run(chunk.iter().map(|&index| &items[index]).collect()).await?;
        for (&index, result) in chunk.iter().zip(results) {
            answers[index] = Some(result);
        }
    }
    Ok(answers
        .into_iter()
        .map(|answer| answer.unwrap_or_else(|| Err(MailboxError::Backend("an item was left unanswered".into()))))
        .collect())
}

/// One script answer code per item, mapped; a count mismatch is a backend error.
fn answers<T>(
    codes: Vec<i64>,
    expected: usize,
    script: &str,
    map: impl Fn(i64, usize) -> Result<T, MailboxError>,
) -> Result<Vec<Result<T, MailboxError>>, MailboxError> {
    if codes.len() != expected {
        return Err(MailboxError::Backend(format!(
            "{script} script answered {} results for {expected} items",
            codes.len()
        )));
    }
    Ok(codes
        .into_iter()
        .enumerate()
        .map(|(index, code)| map(code, index))
        .collect())
}

fn lease_lost(lease: &Lease) -> MailboxError {
    MailboxError::LeaseLost {
        message_id: lease.message_id.clone(),
    }
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .min(MAX_DURATION_MS)
}

/// The next value of a script's flat answer, converted.
fn field<T: FromRedisValue>(fields: &mut impl Iterator<Item = Value>) -> Result<T, MailboxError> {
    let value = fields
        .next()
        .ok_or_else(|| MailboxError::Backend("a script's answer ended early".into()))?;
    ::redis::from_redis_value(value).map_err(|err| MailboxError::Backend(format!("unexpected script answer: {err}")))
}

/// A `jobs` hash value, `<first send, Unix ms>:<payload>`, split without copying.
fn stored_job(message_id: &str, stored: Vec<u8>) -> Result<(u64, Bytes), MailboxError> {
    let stored = Bytes::from(stored);
    let split = stored.iter().position(|&b| b == b':');
    let enqueued_at_ms = split
        .and_then(|at| std::str::from_utf8(&stored[..at]).ok())
        .and_then(|ms| ms.parse().ok());
    match (split, enqueued_at_ms) {
        (Some(at), Some(ms)) => Ok((ms, stored.slice(at + 1..))),
        _ => Err(MailboxError::Backend(format!(
            "stored job `{message_id}` does not start with its send time"
        ))),
    }
}

fn invalid_request_id(request_id: &str) -> Option<MailboxError> {
    validate_request_id(request_id)
        .err()
        .map(|err| MailboxError::Invalid(format!("request id `{request_id}`: {err}")))
}

#[async_trait]
impl Mailbox for RedisMailbox {
    fn queue(&self) -> &str {
        &self.queue
    }

    fn sibling(&self, queue: &str) -> Option<std::sync::Arc<dyn Mailbox>> {
        validate_queue_name(queue).ok()?;
        Some(std::sync::Arc::new(Self {
            queue: queue.to_owned(),
            keys: QueueKeys::new(queue),
            url: self.url.clone(),
            conn: self.conn.clone(),
            reply_ttl: self.reply_ttl,
            blockers: Mutex::new(Vec::new()),
        }))
    }

    async fn send(&self, request_id: &str, payload: Bytes) -> Result<Sent, MailboxError> {
        let mut results = self.send_batch(&[(request_id.to_owned(), payload)]).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(MailboxError::Backend("send answered nothing".into())))
    }

    async fn send_batch(&self, messages: &[(String, Bytes)]) -> Result<Vec<Result<Sent, MailboxError>>, MailboxError> {
        let checked = messages.iter().map(|(request_id, _)| invalid_request_id(request_id));
        in_batches(messages, checked, |chunk| self.send_chunk(chunk)).await
    }

    async fn claim(&self, max: usize, lease: Duration, wait: Duration) -> Result<Vec<Delivery>, MailboxError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let (max, lease_ms) = (max.min(MAX_BATCH), ms(lease));
        let give_up = Instant::now() + wait;
        let mut backoff = BLOCK_RETRY;
        loop {
            let next_change = match self.claim_once(max, lease_ms).await {
                Ok(Claimed::Batch(batch)) => return Ok(batch),
                Ok(Claimed::Nothing { next_change }) => next_change,
                // Ride out a restart or failover while the wait lasts.
                Err(MailboxError::Unavailable(reason)) if Instant::now() + backoff < give_up => {
                    tracing::warn!(queue = %self.queue, %reason, "Redis unavailable while claiming; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_CLAIM_BACKOFF);
                    continue;
                }
                Err(err) => return Err(err),
            };
            let now = Instant::now();
            if now >= give_up {
                return Ok(Vec::new());
            }
            let block = next_change.map_or(give_up - now, |change| change.min(give_up - now));
            self.wait_for_wake(block).await;
        }
    }

    async fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<(), MailboxError> {
        self.finish(&SCRIPTS.extend, lease, &[ms(lease_for).to_string().as_bytes()])
            .await
            .map(drop)
    }

    async fn ack(&self, lease: &Lease, reply: &Reply) -> Result<Acked, MailboxError> {
        let item = (lease.clone(), reply.clone());
        let mut results = self.ack_batch(std::slice::from_ref(&item)).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(MailboxError::Backend("ack answered nothing".into())))
    }

    async fn ack_batch(&self, acks: &[(Lease, Reply)]) -> Result<Vec<Result<Acked, MailboxError>>, MailboxError> {
        let checked = acks.iter().map(|(_, reply)| invalid_request_id(&reply.request_id));
        in_batches(acks, checked, |chunk| self.ack_chunk(chunk)).await
    }

    async fn nack(&self, lease: &Lease, delay: Duration) -> Result<(), MailboxError> {
        self.finish(&SCRIPTS.nack, lease, &[ms(delay).to_string().as_bytes()])
            .await
            .map(drop)
    }

    async fn dead_letter(&self, lease: &Lease, reason: &DeadLetterReason) -> Result<(), MailboxError> {
        self.finish(
            &SCRIPTS.dead_letter,
            lease,
            &[reason.kind.as_bytes(), reason.message.as_bytes()],
        )
        .await
        .map(drop)
    }

    async fn reap(&self) -> Result<u64, MailboxError> {
        self.run_to_completion(&SCRIPTS.reap, &[]).await
    }

    async fn depth(&self) -> Result<Depth, MailboxError> {
        let (ready, in_flight, delayed, dead) = self.run(&self.keys.invoke(&SCRIPTS.depth)).await?;
        Ok(Depth {
            ready,
            in_flight,
            delayed,
            dead,
        })
    }

    async fn purge(&self, scope: PurgeScope) -> Result<u64, MailboxError> {
        let scope = match scope {
            PurgeScope::Pending => "pending",
            PurgeScope::Dead => "dead",
        };
        self.run_to_completion(&SCRIPTS.purge, &[scope]).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, MailboxError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut invocation = self.keys.invoke(&SCRIPTS.dead_letters);
        invocation.arg(limit);
        let answer: Vec<Value> = self.run(&invocation).await?;
        let mut fields = answer.into_iter();
        let mut dead = Vec::new();
        while fields.len() > 0 {
            let message_id: String = field(&mut fields)?;
            let (enqueued_at_ms, payload) = stored_job(&message_id, field(&mut fields)?)?;
            let attempts = field(&mut fields)?;
            let reason: Vec<u8> = field(&mut fields)?;
            let reason: StoredReason = serde_json::from_slice(&reason).map_err(|err| {
                MailboxError::Backend(format!("dead-letter reason of `{message_id}` is not readable: {err}"))
            })?;
            dead.push(DeadLetter {
                message_id,
                payload,
                reason: DeadLetterReason {
                    kind: reason.kind,
                    message: reason.message,
                },
                attempts,
                enqueued_at_ms,
                dead_at_ms: reason.dead_at_ms,
            });
        }
        Ok(dead)
    }

    async fn requeue_dead(&self, selection: &DeadSelection) -> Result<u64, MailboxError> {
        match selection {
            DeadSelection::All => self
                .run_to_completion_counted(&SCRIPTS.requeue_dead, &["all"])
                .await
                .map_err(|(moved, err)| err.after_requeuing(moved, 0)),
            DeadSelection::Ids(ids) => {
                let mut moved = 0;
                for chunk in ids.chunks(MAX_BATCH) {
                    let mut invocation = self.keys.invoke(&SCRIPTS.requeue_dead);
                    invocation.arg("ids");
                    for id in chunk {
                        invocation.arg(id);
                    }
                    moved += self
                        .run::<u64>(&invocation)
                        .await
                        .map_err(|err| err.after_requeuing(moved, 0))?;
                }
                Ok(moved)
            }
        }
    }

    async fn reply(&self, request_id: &str) -> Result<Option<Bytes>, MailboxError> {
        let mut conn = self.conn.clone();
        let body: Option<Vec<u8>> = ::redis::cmd("GET")
            .arg(self.keys.reply(request_id))
            .query_async(&mut conn)
            .await
            .map_err(mailbox_error)?;
        Ok(body.map(Bytes::from))
    }
}
