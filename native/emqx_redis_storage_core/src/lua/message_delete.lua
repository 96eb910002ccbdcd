-- Deletes the whole queue: ids, bodies and counters.
-- Returns the number of messages deleted.
local ids = redis.call('ZRANGE', queue, 0, -1)
in_slices(body_keys(ids), function(...) redis.call('DEL', ...) end)
redis.call('DEL', queue, expiry, meta)
return #ids
