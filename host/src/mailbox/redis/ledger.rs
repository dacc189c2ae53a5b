//! Per-request model spend in Redis, shared by every worker, so a job that is
//! redelivered to another worker continues from what it already spent.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::Script;
use async_trait::async_trait;

use super::connection::{Connection, RedisUrl};
use crate::model::{LedgerError, Spent, UsageLedger};

/// How long a request's usage is kept after its last model call by default.
pub const DEFAULT_USAGE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest TTL given to Redis (ten years), far below its overflow checks.
const MAX_TTL_MS: u64 = 10 * 365 * 24 * 60 * 60 * 1000;

/// Adds one call's spend and refreshes the TTL in one atomic step.
static ADD: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("ledger_add.lua")));

/// A [`UsageLedger`] in Redis: a hash `wink:usage:<request_id>` with the
/// fields `input_tokens`, `output_tokens`, `micro_usd` and `turns`, kept for
/// a TTL after the last call (one key per request, so it spreads over a
/// cluster's slots).
#[derive(Clone)]
pub struct RedisUsageLedger {
    url: RedisUrl,
    conn: Connection,
    ttl: Duration,
}

impl std::fmt::Debug for RedisUsageLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisUsageLedger")
            .field("url", &self.url.display)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RedisUsageLedger {
    /// Connect to the Redis at `url` (the mailbox URL forms; see
    /// [`super::RedisMailbox::open`]), keeping usage for [`DEFAULT_USAGE_TTL`].
    pub async fn open(url: &str) -> Result<Self, LedgerError> {
        let url = RedisUrl::parse(url).map_err(|err| LedgerError(err.to_string()))?;
        let conn = url.connect().await.map_err(|err| LedgerError(err.to_string()))?;
        Ok(Self {
            url,
            conn,
            ttl: DEFAULT_USAGE_TTL,
        })
    }

    /// Keep a request's usage for `ttl` after its last model call.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(1));
        self
    }

    fn key(request_id: &str) -> String {
        format!("wink:usage:{request_id}")
    }

    fn failed(&self, err: &::redis::RedisError) -> LedgerError {
        LedgerError(format!("Redis at `{}`: {err}", self.url.display))
    }
}

/// Counters are signed in Redis; a negative one (edited by hand) reads as 0.
fn counter(value: Option<i64>) -> u64 {
    value.map_or(0, |v| u64::try_from(v).unwrap_or(0))
}

fn spent_from(fields: [Option<i64>; 4]) -> Spent {
    let [input_tokens, output_tokens, micro_usd, turns] = fields;
    Spent {
        input_tokens: counter(input_tokens),
        output_tokens: counter(output_tokens),
        micro_usd: counter(micro_usd),
        turns: u32::try_from(counter(turns)).unwrap_or(u32::MAX),
    }
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[async_trait]
impl UsageLedger for RedisUsageLedger {
    async fn spent(&self, request_id: &str) -> Result<Spent, LedgerError> {
        let mut conn = self.conn.clone();
        let fields: (Option<i64>, Option<i64>, Option<i64>, Option<i64>) = ::redis::cmd("HMGET")
            .arg(Self::key(request_id))
            .arg(&["input_tokens", "output_tokens", "micro_usd", "turns"])
            .query_async(&mut conn)
            .await
            .map_err(|err| self.failed(&err))?;
        Ok(spent_from([fields.0, fields.1, fields.2, fields.3]))
    }

    async fn add(&self, request_id: &str, spend: Spent) -> Result<Spent, LedgerError> {
        let mut conn = self.conn.clone();
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).min(MAX_TTL_MS);
        let totals: (i64, i64, i64, i64) = ADD
            .key(Self::key(request_id))
            .arg(signed(spend.input_tokens))
            .arg(signed(spend.output_tokens))
            .arg(signed(spend.micro_usd))
            .arg(spend.turns)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(|err| self.failed(&err))?;
        Ok(spent_from([
            Some(totals.0),
            Some(totals.1),
            Some(totals.2),
            Some(totals.3),
        ]))
    }

    /// Deletes the request's hash in the background, so the worker's acker
    /// (which forgets every answered request) does not wait a round trip per
    /// job; if the delete fails the hash lapses with its TTL.
    async fn forget(&self, request_id: &str) {
        let ledger = self.clone();
        let key = Self::key(request_id);
        tokio::spawn(async move {
            let mut conn = ledger.conn.clone();
            let deleted: Result<i64, _> = ::redis::cmd("DEL").arg(&key).query_async(&mut conn).await;
            if let Err(err) = deleted {
                tracing::debug!(error = %ledger.failed(&err), "usage left to expire with its TTL");
            }
        });
    }
}
