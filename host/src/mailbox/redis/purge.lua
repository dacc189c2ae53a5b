-- Remove up to MOVE_LIMIT messages: ARGV[1] = 'pending' (ready, then delayed;
-- in-flight ones are left to finish) or 'dead'. Returns how many were
-- removed; fewer than MOVE_LIMIT means none is left.
local removed
if ARGV[1] == 'dead' then
  removed = redis.call('LRANGE', K_DLQ, 0, MOVE_LIMIT - 1)
  redis.call('LTRIM', K_DLQ, #removed, -1)
else
  removed = redis.call('LRANGE', K_READY, 0, MOVE_LIMIT - 1)
  redis.call('LTRIM', K_READY, #removed, -1)
  if #removed < MOVE_LIMIT then
    local delayed = redis.call('ZRANGE', K_DELAYED, 0, MOVE_LIMIT - #removed - 1)
    if #delayed > 0 then
      redis.call('ZREM', K_DELAYED, unpack(delayed))
      for _, id in ipairs(delayed) do
        removed[#removed + 1] = id
      end
    end
  end
end
forget(removed)
return #removed
