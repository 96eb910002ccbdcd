-- Adds a durable filter to a client's set (ds.rs).
-- KEYS: the client's set of durable filters
-- ARGV: filter, the most filters a client may hold
-- Returns 1 if added, 0 if it was there, -1 if the client holds the most.
if read('durable_subscription', 'SISMEMBER', KEYS[1], ARGV[1]) == 1 then
    return 0
end
if read('durable_subscription', 'SCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return -1
end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
