-- Deletes the whole queue: ids, bodies and counters. The way out of a
-- corrupt queue too, so it runs without the prelude's checks: a queue key
-- of the wrong type is deleted all the same.
-- KEYS: queue, expiry, meta, bodies. Returns the number of messages deleted.
local n = 0
if redis.call('TYPE', KEYS[1]).ok == 'zset' then
    n = redis.call('ZCARD', KEYS[1])
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return n
