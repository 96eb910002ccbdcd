-- Sets the total of the session counters (single Redis only) to the sum of
-- the slot counters, atomically: after the sweep has set each slot's
-- counter from its index, this makes the total exact whatever it held.
-- It marks the sweep's time too, once the sweep has succeeded.
-- KEYS: the total, the sweep's mark, then every slot's counter
-- ARGV: the sweep's time (Redis ms)
-- Returns the total.
local sum = 0
local chunk = 4000 -- unpack is bounded by Lua's C stack
for from = 3, #KEYS, chunk do
    local values = redis.call('MGET', unpack(KEYS, from, math.min(from + chunk - 1, #KEYS)))
    for _, v in ipairs(values) do
        sum = sum + (tonumber(v) or 0)
    end
end
redis.call('SET', KEYS[1], int(sum))
redis.call('SET', KEYS[2], ARGV[1])
return sum
