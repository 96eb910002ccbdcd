-- Queues messages in the order of this call, after those queued before.
-- ARGV[2]: max queue length; then per message: id, ttl ms, body.
-- An id that is queued already keeps its place and its body.
-- The oldest messages are dropped (and counted) beyond the max length.
local max_len = tonumber(ARGV[2])
-- Each body starts with the time it was stored: 8 bytes, big-endian ms.
local stored_at = {}
local n = now
for i = 8, 1, -1 do
    stored_at[i] = n % 256
    n = math.floor(n / 256)
end
stored_at = string.char(unpack(stored_at))
for i = 3, #ARGV, 3 do
    local id = ARGV[i]
    if not redis.call('ZSCORE', expiry, id) then
        local expires = now + tonumber(ARGV[i + 1])
        redis.call('ZADD', queue, redis.call('HINCRBY', meta, 'seq', 1), id)
        redis.call('ZADD', expiry, expires, id)
        redis.call('SET', body_prefix .. id, stored_at .. ARGV[i + 2], 'PXAT', expires)
    end
end
local over = redis.call('ZCARD', queue) - max_len
if over > 0 then
    remove(redis.call('ZRANGE', queue, 0, over - 1))
    redis.call('HINCRBY', meta, 'dropped', over)
end
expire_with_last_message()
return redis.call('ZCARD', queue)
