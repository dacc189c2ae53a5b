//! Per-job model budgets, prices, and the usage ledger that carries spend
//! across redeliveries of the same request.
//!
//! Rule for `max-tokens` (documented in docs/models.md): a call is **clamped**,
//! not refused, when what is left of the output, total or USD budget is
//! smaller than the `max-tokens` it asks for (or when it asks for none): the
//! host lowers `max-tokens` to what is left, so the model stops with
//! `max-tokens` instead of overspending. A call is **refused** with
//! `budget-exceeded` when a dimension is already used up, when the turn limit
//! is reached, or when the estimated prompt (four bytes a token) does not fit
//! in what is left of the input or total budget.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::Deserialize;

use super::{ContentBlock, ConverseRequest, ModelError, estimate_tokens, tokens_for_bytes};

/// Limits on one request's model use; none means unlimited. The deadline is
/// the job's [`crate::runtime::Limits::deadline`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// Prompt tokens across all calls.
    pub max_input_tokens: Option<u64>,
    /// Generated tokens across all calls.
    pub max_output_tokens: Option<u64>,
    /// Prompt plus generated tokens.
    pub max_total_tokens: Option<u64>,
    /// Spend in micro-US-dollars, priced with the [`PriceTable`].
    pub max_micro_usd: Option<u64>,
    /// Model calls.
    pub max_turns: Option<u32>,
}

/// What a request has used so far, across all its delivery attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Micro-US-dollars.
    pub micro_usd: u64,
    /// Model calls that got an answer.
    pub turns: u32,
}

impl std::ops::AddAssign for Spent {
    fn add_assign(&mut self, other: Self) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.micro_usd += other.micro_usd;
        self.turns += other.turns;
    }
}

/// What is left of each dimension; none means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remaining {
    /// Prompt tokens.
    pub input_tokens: Option<u64>,
    /// Generated tokens.
    pub output_tokens: Option<u64>,
    /// Prompt plus generated tokens.
    pub total_tokens: Option<u64>,
    /// Micro-US-dollars.
    pub micro_usd: Option<u64>,
    /// Model calls.
    pub turns: Option<u32>,
}

impl Budget {
    /// What `spent` leaves of this budget.
    pub fn remaining(&self, spent: &Spent) -> Remaining {
        let left = |max: Option<u64>, used: u64| max.map(|m| m.saturating_sub(used));
        Remaining {
            input_tokens: left(self.max_input_tokens, spent.input_tokens),
            output_tokens: left(self.max_output_tokens, spent.output_tokens),
            total_tokens: left(self.max_total_tokens, spent.input_tokens + spent.output_tokens),
            micro_usd: left(self.max_micro_usd, spent.micro_usd),
            turns: self.max_turns.map(|m| m.saturating_sub(spent.turns)),
        }
    }

    /// Check a call before it is sent and return the `max-tokens` to send:
    /// refused when a dimension is used up or the prompt cannot fit, clamped
    /// when the requested `max-tokens` exceeds what is left.
    pub fn admit(
        &self,
        spent: &Spent,
        request: &ConverseRequest,
        price: Option<Price>,
    ) -> Result<Option<u32>, ModelError> {
        let left = self.remaining(spent);
        let exceeded = |dimension: &str, limit: u64, used: u64| {
            ModelError::BudgetExceeded(format!("{dimension}: limit {limit}, spent {used}"))
        };
        if let (Some(0), Some(max)) = (left.turns, self.max_turns) {
            return Err(exceeded("turns", max.into(), spent.turns.into()));
        }
        let prompt = u64::from(estimate_prompt_tokens(request));
        let total_used = spent.input_tokens + spent.output_tokens;
        for (dimension, left, max, used) in [
            (
                "input_tokens",
                left.input_tokens,
                self.max_input_tokens,
                spent.input_tokens,
            ),
            ("total_tokens", left.total_tokens, self.max_total_tokens, total_used),
        ] {
            if let (Some(left), Some(max)) = (left, max)
                && prompt >= left
            {
                return Err(exceeded(dimension, max, used));
            }
        }
        let usd_room = match self.max_micro_usd {
            Some(max_usd) => {
                let left_usd = left.micro_usd.unwrap_or(0);
                let price = price.ok_or_else(|| {
                    ModelError::InvalidRequest(
                        "the model has no price, so the job's USD budget cannot be enforced".into(),
                    )
                })?;
                let room = price.output_tokens_for(left_usd.saturating_sub(price.input_cost(prompt)));
                Some(("usd", room, max_usd, spent.micro_usd))
            }
            None => None,
        };
        let output_room = [
            (
                "output_tokens",
                left.output_tokens,
                self.max_output_tokens,
                spent.output_tokens,
            ),
            (
                "total_tokens",
                left.total_tokens.map(|t| t - prompt),
                self.max_total_tokens,
                total_used,
            ),
        ]
        .into_iter()
        .filter_map(|(dimension, left, max, used)| Some((dimension, left?, max?, used)))
        .chain(usd_room);
        let mut max_tokens = request.config.max_tokens;
        for (dimension, room, max, used) in output_room {
            if room == 0 {
                return Err(exceeded(dimension, max, used));
            }
            let room = u32::try_from(room).unwrap_or(u32::MAX);
            if max_tokens.is_none_or(|asked| asked > room) {
                max_tokens = Some(room);
            }
        }
        if request.config.max_tokens.is_none() {
            // Set by the host, not asked for: within what the model takes and
            // what Bedrock's field (an i32) carries, or every call is refused.
            let ceiling = price.and_then(|price| price.max_tokens).unwrap_or(i32::MAX as u32);
            max_tokens = max_tokens.map(|room| room.min(ceiling));
        }
        Ok(max_tokens)
    }
}

/// A rough prompt size, four bytes a token, used only to refuse calls that
/// cannot fit and to size the output's room; the provider's count is what
/// gets recorded. Everything sent is counted: in an agent's loop most of
/// the prompt is tool results, and the tools' specs are billed too.
pub(super) fn estimate_prompt_tokens(request: &ConverseRequest) -> u32 {
    let system: u32 = request.system.iter().map(|s| estimate_tokens(s)).sum();
    // Each message's blocks counted together, without concatenating them.
    let block_bytes = |blocks: &[ContentBlock]| -> usize {
        blocks
            .iter()
            .map(|block| match block {
                ContentBlock::Text(text) => text.len(),
                ContentBlock::ToolUse(call) => call.id.len() + call.name.len() + call.input.len(),
                ContentBlock::ToolResult(result) => result.tool_use_id.len() + result.content.len(),
            })
            .sum()
    };
    let messages: u32 = request
        .messages
        .iter()
        .map(|m| tokens_for_bytes(block_bytes(&m.content)))
        .sum();
    let tools: u32 = request
        .tools
        .iter()
        .map(|tool| tokens_for_bytes(tool.name.len() + tool.description.len() + tool.input_schema.len()))
        .sum();
    system.saturating_add(messages).saturating_add(tools)
}

/// A model's price in US dollars per million tokens (which is also
/// micro-dollars per token), and what it can generate.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Prompt tokens.
    pub input_usd_per_mtok: f64,
    /// Generated tokens.
    pub output_usd_per_mtok: f64,
    /// The largest `max_tokens` the model takes, where known. When a call
    /// sets none and a budget makes the host set one, it stays within this:
    /// Bedrock refuses a larger one.
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

impl Price {
    /// Micro-dollars for `tokens` prompt tokens, rounded up.
    pub fn input_cost(&self, tokens: u64) -> u64 {
        (tokens as f64 * self.input_usd_per_mtok).ceil() as u64
    }

    /// Micro-dollars for a call's usage, rounded up.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> u64 {
        (input_tokens as f64 * self.input_usd_per_mtok + output_tokens as f64 * self.output_usd_per_mtok).ceil() as u64
    }

    /// How many generated tokens `micro_usd` pays for.
    fn output_tokens_for(&self, micro_usd: u64) -> u64 {
        if self.output_usd_per_mtok <= 0.0 {
            return u64::MAX;
        }
        (micro_usd as f64 / self.output_usd_per_mtok).floor() as u64
    }
}

/// Prices by model id prefix. Cross-region inference-profile prefixes
/// (`us.`, `eu.`, `apac.`, `global.`, ...) are ignored when matching, and the
/// longest matching prefix wins, so `anthropic.claude-3-5-haiku` prices
/// `us.anthropic.claude-3-5-haiku-20241022-v1:0`.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    prices: HashMap<String, Price>,
}

/// On-demand Bedrock list prices (USD per million tokens, input and
/// output) of the Anthropic Claude models, and their largest `max_tokens`;
/// override them with [`PriceTable::with_overrides`].
const CLAUDE_PRICES: &[(&str, f64, f64, u32)] = &[
    ("anthropic.claude-3-haiku", 0.25, 1.25, 4_096),
    ("anthropic.claude-3-5-haiku", 0.80, 4.0, 8_192),
    ("anthropic.claude-haiku-4-5", 1.0, 5.0, 64_000),
    ("anthropic.claude-3-sonnet", 3.0, 15.0, 4_096),
    ("anthropic.claude-3-5-sonnet", 3.0, 15.0, 8_192),
    ("anthropic.claude-3-7-sonnet", 3.0, 15.0, 64_000),
    ("anthropic.claude-sonnet-4", 3.0, 15.0, 64_000),
    ("anthropic.claude-sonnet-4-5", 3.0, 15.0, 64_000),
    ("anthropic.claude-3-opus", 15.0, 75.0, 4_096),
    ("anthropic.claude-opus-4", 15.0, 75.0, 32_000),
    ("anthropic.claude-opus-4-1", 15.0, 75.0, 32_000),
];

impl Default for PriceTable {
    fn default() -> Self {
        let prices = CLAUDE_PRICES
            .iter()
            .map(|&(id, input, output, max_output)| {
                let price = Price {
                    input_usd_per_mtok: input,
                    output_usd_per_mtok: output,
                    max_tokens: Some(max_output),
                };
                (id.to_owned(), price)
            })
            .collect();
        Self { prices }
    }
}

impl PriceTable {
    /// The defaults with entries from a JSON object
    /// `{"MODEL_PREFIX": {"input_usd_per_mtok": N, "output_usd_per_mtok": N}}` added or replaced.
    pub fn with_overrides(json: &str) -> Result<Self, String> {
        let overrides: HashMap<String, Price> = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut table = Self::default();
        table.extend(overrides);
        Ok(table)
    }

    /// Add or replace entries, by model id prefix.
    pub fn extend(&mut self, prices: impl IntoIterator<Item = (String, Price)>) {
        self.prices.extend(prices);
    }

    /// The price of `model`, if any prefix matches.
    pub fn price(&self, model: &str) -> Option<Price> {
        [model, strip_region_prefix(model)]
            .into_iter()
            .flat_map(|id| {
                self.prices
                    .iter()
                    .filter(move |(prefix, _)| id.starts_with(prefix.as_str()))
            })
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, price)| *price)
    }
}

/// `us.anthropic.claude...` -> `anthropic.claude...`: profile ids put a
/// short region group before the provider name.
fn strip_region_prefix(model: &str) -> &str {
    match model.split_once('.') {
        Some((group, rest)) if group.len() <= 6 && rest.contains('.') => rest,
        _ => model,
    }
}

/// Where per-request spend is kept so that a redelivered request continues
/// from what it already spent instead of getting a fresh budget.
#[async_trait]
pub trait UsageLedger: Send + Sync + std::fmt::Debug {
    /// What `request_id` has spent so far.
    async fn spent(&self, request_id: &str) -> Result<Spent, LedgerError>;
    /// Add one call's spend and return the new total.
    async fn add(&self, request_id: &str, spend: Spent) -> Result<Spent, LedgerError>;
    /// Drop what is kept for `request_id`: its job is finished (answered or
    /// dead-lettered) and will not be delivered again. Default: keep it.
    async fn forget(&self, _request_id: &str) {}
}

/// A ledger kept outside the process could not be read or updated. Calls
/// fail rather than run unaccounted or with a fresh budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("usage ledger unavailable: {0}")]
pub struct LedgerError(pub String);

/// An in-process [`UsageLedger`].
#[derive(Debug, Default)]
pub struct MemoryUsageLedger {
    by_request: Mutex<HashMap<String, Spent>>,
}

impl MemoryUsageLedger {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Spent>> {
        self.by_request
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl UsageLedger for MemoryUsageLedger {
    async fn spent(&self, request_id: &str) -> Result<Spent, LedgerError> {
        Ok(self.map().get(request_id).copied().unwrap_or_default())
    }

    async fn add(&self, request_id: &str, spend: Spent) -> Result<Spent, LedgerError> {
        let mut map = self.map();
        // Look up before inserting: `entry` would allocate the key on every call.
        if let Some(total) = map.get_mut(request_id) {
            *total += spend;
            return Ok(*total);
        }
        map.insert(request_id.to_owned(), spend);
        Ok(spend)
    }

    async fn forget(&self, request_id: &str) {
        self.map().remove(request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::model::InferenceConfig;
    use crate::model::{ContentBlock, Message, Role};

    fn request(max_tokens: Option<u32>) -> ConverseRequest {
        ConverseRequest {
            model: None,
            system: vec![],
            messages: vec![Message {
                role: Role::User,
                content: vec![ContentBlock::Text("12345678".into())], // two tokens
            }],
            tools: vec![],
            config: InferenceConfig {
                max_tokens,
                temperature: None,
                top_p: None,
                top_k: None,
                stop_sequences: vec![],
            },
        }
    }

    #[test]
    fn clamps_max_tokens_to_what_is_left_and_refuses_when_nothing_is() {
        let budget = Budget {
            max_output_tokens: Some(100),
            ..Budget::default()
        };
        let spent = Spent {
            output_tokens: 70,
            ..Spent::default()
        };
        assert_eq!(budget.admit(&spent, &request(Some(50)), None), Ok(Some(30)));
        assert_eq!(budget.admit(&spent, &request(Some(10)), None), Ok(Some(10)));
        assert_eq!(budget.admit(&spent, &request(None), None), Ok(Some(30)));
        let all = Spent {
            output_tokens: 100,
            ..Spent::default()
        };
        let err = budget.admit(&all, &request(Some(1)), None).unwrap_err();
        assert_eq!(
            err,
            ModelError::BudgetExceeded("output_tokens: limit 100, spent 100".into())
        );
    }

    #[test]
    fn refuses_a_prompt_that_cannot_fit_and_prices_usd() {
        let budget = Budget {
            max_total_tokens: Some(10),
            ..Budget::default()
        };
        let spent = Spent {
            input_tokens: 8,
            ..Spent::default()
        };
        let err = budget.admit(&spent, &request(None), None).unwrap_err();
        assert!(err.to_string().contains("total_tokens"), "{err}");

        let table = PriceTable::default();
        let price = table
            .price("us.anthropic.claude-3-5-haiku-20241022-v1:0")
            .expect("priced");
        assert_eq!(price.output_usd_per_mtok, 4.0);
        assert_eq!(
            table
                .price("anthropic.claude-opus-4-1-20250805-v1:0")
                .map(|p| p.input_usd_per_mtok),
            Some(15.0)
        );
        assert_eq!(table.price("meta.llama3"), None);
        // 1000 micro-dollars at $4/Mtok output = 250 tokens, less the 2-token prompt's cost.
        let usd = Budget {
            max_micro_usd: Some(1000),
            ..Budget::default()
        };
        assert_eq!(usd.admit(&Spent::default(), &request(None), Some(price)), Ok(Some(249)));
    }

    #[test]
    fn tool_results_tool_calls_and_tool_specs_count_toward_the_prompt() {
        use crate::bindings::types::ToolSpec;
        use crate::model::{ToolResult, ToolUse};
        let budget = Budget {
            max_input_tokens: Some(1_000),
            ..Budget::default()
        };
        // A tool result of 8,000 bytes, about 2,000 tokens: it cannot fit.
        let mut big_result = request(None);
        big_result.messages[0]
            .content
            .push(ContentBlock::ToolResult(ToolResult {
                tool_use_id: "t1".into(),
                content: format!("\"{}\"", "x".repeat(8_000)),
                is_error: false,
            }));
        let err = budget.admit(&Spent::default(), &big_result, None).unwrap_err();
        assert_eq!(
            err,
            ModelError::BudgetExceeded("input_tokens: limit 1000, spent 0".into())
        );

        let mut big_call = request(None);
        big_call.messages[0].content.push(ContentBlock::ToolUse(ToolUse {
            id: "t1".into(),
            name: "search".into(),
            input: format!("{{\"q\": \"{}\"}}", "x".repeat(8_000)),
        }));
        assert!(budget.admit(&Spent::default(), &big_call, None).is_err());

        let mut big_spec = request(None);
        big_spec.tools.push(ToolSpec {
            name: "search".into(),
            description: "d".repeat(8_000),
            input_schema: "{}".into(),
        });
        assert!(budget.admit(&Spent::default(), &big_spec, None).is_err());
        assert!(budget.admit(&Spent::default(), &request(None), None).is_ok());
    }

    #[test]
    fn a_max_tokens_the_host_sets_stays_within_what_the_model_takes() {
        let haiku = PriceTable::default()
            .price("us.anthropic.claude-3-5-haiku-20241022-v1:0")
            .expect("priced");
        // $1 at $4/Mtok output leaves room for about 250,000 tokens.
        let dollar = Budget {
            max_micro_usd: Some(1_000_000),
            ..Budget::default()
        };
        assert_eq!(
            dollar.admit(&Spent::default(), &request(None), Some(haiku)),
            Ok(Some(8_192))
        );
        // What the call asks for is its own to ask.
        assert_eq!(
            dollar.admit(&Spent::default(), &request(Some(20_000)), Some(haiku)),
            Ok(Some(20_000))
        );
        // A model without a known ceiling: within what Bedrock's field carries.
        let tokens = Budget {
            max_output_tokens: Some(u64::MAX),
            ..Budget::default()
        };
        assert_eq!(
            tokens.admit(&Spent::default(), &request(None), None),
            Ok(Some(i32::MAX as u32))
        );
    }

    #[test]
    fn price_overrides_are_merged_over_the_defaults() {
        let table =
            PriceTable::with_overrides(r#"{"meta.llama3": {"input_usd_per_mtok": 0.3, "output_usd_per_mtok": 0.6}}"#)
                .expect("valid");
        assert!(table.price("meta.llama3-8b-instruct-v1:0").is_some());
        assert!(table.price("anthropic.claude-3-haiku-20240307-v1:0").is_some());
        assert!(PriceTable::with_overrides(r#"{"x": {"input": 1}}"#).is_err());
    }
}
