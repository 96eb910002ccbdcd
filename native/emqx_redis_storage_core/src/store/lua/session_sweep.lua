-- Reclaims the expired entries of one slot's session index and sets the
-- slot's counter to the entries left (count_sessions' sweep; no counter
-- for an empty index: INCRBY starts a missing one from 0).
-- KEYS: session index of the slot, its counter
-- ARGV: now (Redis ms)
-- Returns the entries left.
read('session_index', 'ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if n == 0 then
    redis.call('DEL', KEYS[2])
else
    redis.call('SET', KEYS[2], n)
end
return n
