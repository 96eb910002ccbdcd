-- One key of a backup, copied atomically: its DUMP payload and its expiry.
-- KEYS: the key
-- Returns {payload, absolute expiry in Unix ms or 0}, or nil if it is gone.
local payload = redis.call('DUMP', KEYS[1])
if not payload then
    return false
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
    return {payload, 0}
end
return {payload, now_ms() + ttl}
