-- Make due delayed messages ready and return lapsed leases to the ready list.
-- Returns how many leases were returned (at most MOVE_LIMIT; call again while
-- it returns MOVE_LIMIT).
local now = now_ms()
promote_due(now)
return reap_lapsed(now)
