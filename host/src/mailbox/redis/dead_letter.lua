-- Move a held delivery to the dead-letter queue.
-- ARGV: id, token, reason kind, reason message. Returns 1, or 0 if the lease is not held.
local id, token = ARGV[1], ARGV[2]
local now = now_ms()
if not holds(id, token, now) then
  return 0
end
release(id)
redis.call('HSET', K_DEAD, id, cjson.encode({ kind = ARGV[3], message = ARGV[4], dead_at_ms = now }))
redis.call('RPUSH', K_DLQ, id)
return 1
