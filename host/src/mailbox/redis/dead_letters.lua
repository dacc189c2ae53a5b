-- Up to ARGV[1] dead letters, oldest first.
-- Returns per message: id, stored job, attempts, reason JSON.
local ids = redis.call('LRANGE', K_DLQ, 0, tonumber(ARGV[1]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local n = #out
  out[n + 1] = id
  out[n + 2] = redis.call('HGET', K_JOBS, id) or '0:'
  out[n + 3] = redis.call('HGET', K_ATTEMPTS, id) or '0'
  out[n + 4] = redis.call('HGET', K_DEAD, id) or '{}'
end
return out
