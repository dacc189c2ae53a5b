-- Claim up to ARGV[1] ready messages, each leased for ARGV[2] ms, after
-- making due delayed messages and lapsed leases ready.
-- Returns { hint } when nothing was claimed, hint being the ms until the
-- next delayed message is due or lease lapses (-1: none pending); else
-- { 0, token, deadline_ms, then per message: id, stored job, attempt }.
-- The token is this claim's: unique per claim of a message, shared by the batch.
local max, lease_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
promote_due(now)
reap_lapsed(now)
local ids = redis.call('LPOP', K_READY, max)
if not ids then
  local next_due = -1
  for _, key in ipairs({ K_DELAYED, K_INFLIGHT }) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #first == 2 then
      local wait = math.max(tonumber(first[2]) - now, 0)
      if next_due < 0 or wait < next_due then
        next_due = wait
      end
    end
  end
  return { next_due }
end
-- One call per key for the whole batch, not one per message.
local jobs = redis.call('HMGET', K_JOBS, unpack(ids))
local attempts = redis.call('HMGET', K_ATTEMPTS, unpack(ids))
local deadline = decimal(now + lease_ms)
local token = decimal(now) .. '-' .. decimal(redis.call('INCR', K_SEQ))
-- Field/value (and score/member) pairs for one HSET or ZADD each.
local tokens, counts, deadlines = {}, {}, {}
local claimed = 0
local out = { 0, token, deadline }
for i, id in ipairs(ids) do
  -- An id without a job was purged while listed; skip it.
  if jobs[i] then
    local attempt = (tonumber(attempts[i]) or 0) + 1
    local pair = 2 * claimed
    tokens[pair + 1] = id
    tokens[pair + 2] = token
    counts[pair + 1] = id
    counts[pair + 2] = attempt
    deadlines[pair + 1] = deadline
    deadlines[pair + 2] = id
    local n = 3 + 3 * claimed
    out[n + 1] = id
    out[n + 2] = jobs[i]
    out[n + 3] = attempt
    claimed = claimed + 1
  end
end
if claimed > 0 then
  redis.call('HSET', K_LEASE, unpack(tokens))
  redis.call('HSET', K_ATTEMPTS, unpack(counts))
  redis.call('ZADD', K_INFLIGHT, unpack(deadlines))
end
-- Messages left behind: pass the wake-up on to the next blocked claimer.
if redis.call('LLEN', K_READY) > 0 then
  wake()
end
return out
