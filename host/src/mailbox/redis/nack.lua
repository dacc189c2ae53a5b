-- Give a held delivery back: ready now (ARGV[3] = 0) or after ARGV[3] ms.
-- ARGV: id, token, delay ms. Returns 1, or 0 if the lease is not held.
local id, token, delay_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
if not holds(id, token, now) then
  return 0
end
release(id)
if delay_ms > 0 then
  redis.call('ZADD', K_DELAYED, now + delay_ms, id)
else
  push_ready({ id })
end
return 1
