//! What a job may do with models: which ones, and how much. The host applies
//! it around every provider call, so no provider can bypass it.

use std::sync::Arc;
use std::time::Instant;

use super::budget::{
    Budget, LedgerError, MemoryUsageLedger, Price, PriceTable, Remaining, Spent, UsageLedger, estimate_prompt_tokens,
};
use super::{CallContext, ConverseRequest, ConverseResponse, ModelError, ModelProvider};

/// A job's model allowlist, default model, budget and accounting.
#[derive(Debug, Clone)]
pub struct ModelPolicy {
    /// Model ids the agent may call; none: any.
    pub allowed_models: Option<Vec<String>>,
    /// The model for requests that name none (before the provider's own default).
    pub default_model: Option<String>,
    /// Per-request limits.
    pub budget: Budget,
    /// Prices for the USD dimension.
    pub prices: Arc<PriceTable>,
    /// Where spend is recorded per request id.
    pub ledger: Arc<dyn UsageLedger>,
}

impl Default for ModelPolicy {
    /// Any model, no budget, default prices, an in-memory ledger.
    fn default() -> Self {
        Self {
            allowed_models: None,
            default_model: None,
            budget: Budget::default(),
            prices: Arc::new(PriceTable::default()),
            ledger: Arc::new(MemoryUsageLedger::default()),
        }
    }
}

/// What the policy decided about one call and what it cost, for telemetry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallAccount {
    /// The model the call went to (after defaults), if any was named.
    pub model: Option<String>,
    /// The `max-tokens` sent, after the budget's clamp.
    pub max_tokens: Option<u32>,
    /// What the call cost, in micro-US-dollars (0 when the model has no price).
    pub micro_usd: u64,
}

impl ModelPolicy {
    /// The model a request goes to: its own, else the job's default, else
    /// the provider's.
    pub fn resolve_model(&self, request: &ConverseRequest, provider: &dyn ModelProvider) -> Option<String> {
        request
            .model
            .as_deref()
            .or(self.default_model.as_deref())
            .or(provider.default_model())
            .map(str::to_owned)
    }

    /// Serve one call: deadline, allowlist and budget checks, the provider
    /// call with `max-tokens` clamped to what is left, then accounting.
    pub async fn converse(
        &self,
        provider: &dyn ModelProvider,
        request: ConverseRequest,
        context: &CallContext,
    ) -> Result<ConverseResponse, ModelError> {
        self.converse_accounted(provider, request, context, &mut CallAccount::default())
            .await
    }

    /// As [`Self::converse`], filling in `account` as the call proceeds (so
    /// that a refused call still says which model it named).
    pub async fn converse_accounted(
        &self,
        provider: &dyn ModelProvider,
        mut request: ConverseRequest,
        context: &CallContext,
        account: &mut CallAccount,
    ) -> Result<ConverseResponse, ModelError> {
        if request.model.is_none() {
            request.model = self.default_model.clone();
        }
        let model = self.resolve_model(&request, provider);
        account.model = model.clone();
        if Instant::now() >= context.deadline {
            return Err(ModelError::DeadlineExceeded);
        }
        self.check_allowed(model.as_deref())?;
        let price = model.as_deref().and_then(|m| self.prices.price(m));
        let spent = self.ledger.spent(&context.request_id).await.map_err(ledger_failed)?;
        request.config.max_tokens = self.budget.admit(&spent, &request, price)?;
        account.max_tokens = request.config.max_tokens;
        let in_flight = InFlight {
            ledger: &self.ledger,
            request_id: &context.request_id,
            request: &request,
            price,
            answered: false,
        };
        let response = provider.converse(&request, context).await;
        // Answered, or failed with an answer (not billed): accounted below.
        in_flight.answered();
        let response = response?;
        let (input_tokens, output_tokens) = (
            u64::from(response.usage.input_tokens),
            u64::from(response.usage.output_tokens),
        );
        let spend = Spent {
            input_tokens,
            output_tokens,
            micro_usd: price.map_or(0, |p| p.cost(input_tokens, output_tokens)),
            turns: 1,
        };
        account.micro_usd = spend.micro_usd;
        // The call is paid for; if it cannot be recorded, failing it is the
        // safe side: its answer is dropped rather than spend going unseen.
        let total = self
            .ledger
            .add(&context.request_id, spend)
            .await
            .map_err(ledger_failed)?;
        tracing::debug!(
            input_tokens,
            output_tokens,
            micro_usd = spend.micro_usd,
            total_micro_usd = total.micro_usd,
            "model call accounted"
        );
        Ok(response)
    }

    /// Whether `model` is one this policy knows (granted, a default, or
    /// priced): a bounded set, safe to use as a metric label, unlike a name a
    /// guest made up.
    pub fn knows_model(&self, model: &str, provider: &dyn ModelProvider) -> bool {
        self.allowed_models
            .as_ref()
            .is_some_and(|allowed| allowed.iter().any(|a| a == model))
            || self.default_model.as_deref() == Some(model)
            || provider.default_model() == Some(model)
            || self.prices.price(model).is_some()
    }

    fn check_allowed(&self, model: Option<&str>) -> Result<(), ModelError> {
        let Some(allowed) = &self.allowed_models else {
            return Ok(());
        };
        match model {
            Some(model) if allowed.iter().any(|a| a == model) => Ok(()),
            Some(model) => Err(ModelError::NotAllowed(format!(
                "model {model} is not granted to this agent"
            ))),
            None => Err(ModelError::NotAllowed(
                "the request names no model and the job has no default".into(),
            )),
        }
    }

    /// What is left of the budget for `request_id`.
    pub async fn remaining(&self, request_id: &str) -> Result<Remaining, LedgerError> {
        Ok(self.budget.remaining(&self.ledger.spent(request_id).await?))
    }
}

/// What a call to `request` could cost at most: its prompt (estimated) and
/// every token its `max_tokens` allows (none known without one); not a
/// turn, which counts answers.
fn worst_case(request: &ConverseRequest, price: Option<Price>) -> Spent {
    let input_tokens = u64::from(estimate_prompt_tokens(request));
    let output_tokens = u64::from(
        request
            .config
            .max_tokens
            .or_else(|| price.and_then(|price| price.max_tokens))
            .unwrap_or(0),
    );
    Spent {
        input_tokens,
        output_tokens,
        micro_usd: price.map_or(0, |price| price.cost(input_tokens, output_tokens)),
        // Turns count the calls that got an answer.
        turns: 0,
    }
}

/// A model call on its way. Dropped before it answered (the job's deadline,
/// shutdown or a lost lease cut it short), it charges the ledger the call's
/// worst case: Bedrock may well finish and bill it, and a retry of the job
/// must find that spend rather than a budget that never saw it. Only
/// borrows until then: a call that answers costs nothing more.
struct InFlight<'a> {
    ledger: &'a Arc<dyn UsageLedger>,
    request_id: &'a Arc<str>,
    request: &'a ConverseRequest,
    price: Option<Price>,
    answered: bool,
}

impl InFlight<'_> {
    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        // Drop cannot wait; outside a runtime (never, in the host) the charge is lost.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let worst_case = worst_case(self.request, self.price);
        let (ledger, request_id) = (self.ledger.clone(), self.request_id.clone());
        runtime.spawn(async move {
            match ledger.add(&request_id, worst_case).await {
                Ok(_) => tracing::info!(
                    request_id = &*request_id,
                    input_tokens = worst_case.input_tokens,
                    output_tokens = worst_case.output_tokens,
                    micro_usd = worst_case.micro_usd,
                    "a model call cut short was charged its worst case"
                ),
                Err(err) => tracing::warn!(
                    request_id = &*request_id,
                    error = %err,
                    "cannot charge a model call cut short"
                ),
            }
        });
    }
}

/// An unreadable ledger fails the call: running it unaccounted could overspend.
fn ledger_failed(err: LedgerError) -> ModelError {
    ModelError::Provider(err.to_string())
}
