-- Returns { ready, in flight, delayed, dead }, read at one instant.
return {
  redis.call('LLEN', K_READY),
  redis.call('ZCARD', K_INFLIGHT),
  redis.call('ZCARD', K_DELAYED),
  redis.call('LLEN', K_DLQ),
}
