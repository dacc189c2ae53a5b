-- Finish deliveries: store each reply unless one is stored, remove the message.
-- KEYS[FIXED_KEYS + i]: reply key of item i.
-- ARGV: reply ttl ms, then per item: id, token, reply body.
-- Returns per item: 1 replied, 2 an earlier reply stands, 0 lease not held.
local ttl = ARGV[1]
local count = #KEYS - FIXED_KEYS
local now = now_ms()
local ids = {}
for i = 1, count do
  ids[i] = ARGV[3 * i - 1]
end
-- Read every lease at once; items are then judged in order, so the second
-- of two acks of one lease in a batch finds it already finished.
local held = redis.call('HMGET', K_LEASE, unpack(ids))
local deadlines = redis.call('ZMSCORE', K_INFLIGHT, unpack(ids))
local finished, done, results = {}, {}, {}
for i = 1, count do
  local id = ids[i]
  if not finished[id] and held[i] == ARGV[3 * i] and deadlines[i] and tonumber(deadlines[i]) > now then
    finished[id] = true
    done[#done + 1] = id
    if redis.call('SET', KEYS[FIXED_KEYS + i], ARGV[3 * i + 1], 'NX', 'PX', ttl) then
      results[i] = 1
    else
      results[i] = 2
    end
  else
    results[i] = 0
  end
end
if #done > 0 then
  redis.call('ZREM', K_INFLIGHT, unpack(done))
  redis.call('HDEL', K_LEASE, unpack(done))
  redis.call('HDEL', K_JOBS, unpack(done))
  redis.call('HDEL', K_ATTEMPTS, unpack(done))
end
return results
