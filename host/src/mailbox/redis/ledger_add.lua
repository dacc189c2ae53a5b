-- Add one model call's spend to a request's usage and keep it for ARGV[5] ms.
-- KEYS[1]: the request's usage hash. ARGV: input tokens, output tokens,
-- micro-USD, turns, ttl ms. Returns the new totals in that order.
local totals = {
  redis.call('HINCRBY', KEYS[1], 'input_tokens', ARGV[1]),
  redis.call('HINCRBY', KEYS[1], 'output_tokens', ARGV[2]),
  redis.call('HINCRBY', KEYS[1], 'micro_usd', ARGV[3]),
  redis.call('HINCRBY', KEYS[1], 'turns', ARGV[4]),
}
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return totals
