-- Queue messages unless their request ids are known.
-- KEYS[FIXED_KEYS + i]: the reply key of message i.
-- ARGV: per message: request id, payload.
-- Returns per message: 1 queued, 0 a duplicate (also of an earlier one in this call).
local now = decimal(now_ms())
local queued, results = {}, {}
for i = 1, #KEYS - FIXED_KEYS do
  local id = ARGV[2 * i - 1]
  if redis.call('EXISTS', KEYS[FIXED_KEYS + i]) == 0 and redis.call('HSETNX', K_JOBS, id, now .. ':' .. ARGV[2 * i]) == 1 then
    queued[#queued + 1] = id
    results[i] = 1
  else
    results[i] = 0
  end
end
push_ready(queued)
return results
