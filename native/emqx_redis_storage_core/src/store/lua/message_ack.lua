-- Removes one message; an id that is not queued is fine.
-- ARGV[2]: message id. Returns 1 if it was queued, else 0.
local queued = redis.call('ZSCORE', queue, ARGV[2])
settle({})
remove({ARGV[2]})
expire_with_last_message()
return queued and 1 or 0
