-- Deletes the whole queue: ids, bodies and counters. The way out of a
-- corrupt queue too, so it runs without the prelude's checks: a queue key
-- of the wrong type is deleted all the same (the bodies it would have named
-- expire by themselves).
-- KEYS: queue, expiry, meta. ARGV[1]: the prefix of the client's body keys.
-- Returns the number of messages deleted.
local ids = {}
if redis.call('TYPE', KEYS[1]).ok == 'zset' then
    ids = redis.call('ZRANGE', KEYS[1], 0, -1)
end
for i = 1, #ids, 1000 do
    local keys = {}
    for j = i, math.min(i + 999, #ids) do
        keys[#keys + 1] = ARGV[1] .. ids[j]
    end
    redis.call('DEL', unpack(keys))
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return #ids
