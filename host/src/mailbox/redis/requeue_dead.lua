-- Move dead letters back to the ready list with a fresh attempt count.
-- ARGV: 'all' (up to MOVE_LIMIT of them; fewer means none is left), or
-- 'ids' followed by message ids (ids not in the dead-letter queue are skipped).
-- Returns how many were moved.
local moved = {}
if ARGV[1] == 'all' then
  moved = redis.call('LRANGE', K_DLQ, 0, MOVE_LIMIT - 1)
  redis.call('LTRIM', K_DLQ, #moved, -1)
else
  for i = 2, #ARGV do
    if redis.call('LREM', K_DLQ, 0, ARGV[i]) > 0 then
      moved[#moved + 1] = ARGV[i]
    end
  end
end
for _, id in ipairs(moved) do
  redis.call('HSET', K_ATTEMPTS, id, 0)
  redis.call('HDEL', K_DEAD, id)
end
push_ready(moved)
return #moved
