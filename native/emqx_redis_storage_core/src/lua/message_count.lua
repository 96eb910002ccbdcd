-- The number of live messages.
return redis.call('ZCARD', queue)
