-- Push a held lease's deadline to ARGV[3] ms from now.
-- ARGV: id, token, lease ms. Returns the new deadline, or 0 if the lease is not held.
local id, token, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
if not holds(id, token, now) then
  return 0
end
redis.call('ZADD', K_INFLIGHT, now + lease_ms, id)
return now + lease_ms
