-- Shared by every queue script (redis.rs prepends it). Every key a script
-- touches is declared in KEYS, in this order, all under the queue's hash tag
-- `{wink:QUEUE}`, so the scripts run unchanged on Redis Cluster. Scripts that
-- take reply keys get them after these.
local K_READY = KEYS[1] -- LIST of message ids, claimed from the head
local K_JOBS = KEYS[2] -- HASH id -> '<first send, Unix ms>:<payload>', while the message exists
local K_ATTEMPTS = KEYS[3] -- HASH id -> deliveries so far
local K_LEASE = KEYS[4] -- HASH id -> token of the current claim, while in flight
local K_INFLIGHT = KEYS[5] -- ZSET id by lease deadline, Unix ms
local K_DELAYED = KEYS[6] -- ZSET id by due time, Unix ms
local K_DLQ = KEYS[7] -- LIST of dead ids, oldest first
local K_DEAD = KEYS[8] -- HASH id -> JSON {kind, message, dead_at_ms}
local K_WAKE = KEYS[9] -- LIST of at most one marker; blocked claimers BLPOP it
local K_SEQ = KEYS[10] -- counter that makes lease tokens unique
local FIXED_KEYS = 10

-- At most this many messages are moved per call, so one script never holds
-- Redis for long (and `unpack` stays far below Lua's stack limit).
local MOVE_LIMIT = 1000

-- Time comes from the server, never from a client's clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- An integer as a decimal string; Lua would print large ones in exponent form.
local function decimal(n)
  return string.format('%d', n)
end

-- Wake one blocked claimer. One marker is enough: a claimer that leaves
-- messages behind wakes the next one (see claim.lua).
local function wake()
  redis.call('LPUSH', K_WAKE, '1')
  redis.call('LTRIM', K_WAKE, 0, 0)
end

-- Append ids to the ready list, waking a claimer if the list was empty
-- (claimers only block after finding it empty).
local function push_ready(ids)
  if #ids == 0 then
    return
  end
  if redis.call('RPUSH', K_READY, unpack(ids)) == #ids then
    wake()
  end
end

-- Delayed messages whose time has come become ready.
local function promote_due(now)
  local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT', 0, MOVE_LIMIT)
  if #due > 0 then
    redis.call('ZREM', K_DELAYED, unpack(due))
    push_ready(due)
  end
  return #due
end

-- Lapsed leases end: their tokens are dropped and the messages are ready again.
local function reap_lapsed(now)
  local lapsed = redis.call('ZRANGEBYSCORE', K_INFLIGHT, '-inf', now, 'LIMIT', 0, MOVE_LIMIT)
  if #lapsed > 0 then
    redis.call('ZREM', K_INFLIGHT, unpack(lapsed))
    redis.call('HDEL', K_LEASE, unpack(lapsed))
    push_ready(lapsed)
  end
  return #lapsed
end

-- Whether `token` is the current, unexpired lease on `id`.
local function holds(id, token, now)
  if redis.call('HGET', K_LEASE, id) ~= token then
    return false
  end
  local deadline = redis.call('ZSCORE', K_INFLIGHT, id)
  return deadline ~= false and tonumber(deadline) > now
end

-- End the lease on `id` (the caller has checked it holds it).
local function release(id)
  redis.call('ZREM', K_INFLIGHT, id)
  redis.call('HDEL', K_LEASE, id)
end

-- Drop everything stored about messages that no longer exist.
local function forget(ids)
  if #ids == 0 then
    return
  end
  redis.call('HDEL', K_JOBS, unpack(ids))
  redis.call('HDEL', K_ATTEMPTS, unpack(ids))
  redis.call('HDEL', K_DEAD, unpack(ids))
end

