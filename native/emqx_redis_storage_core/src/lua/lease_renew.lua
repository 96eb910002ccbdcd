-- Extends the lease if it is still held with this fence.
-- KEYS: lease, fence
-- ARGV: fence, lease ms
-- Returns {1} or {0, current owner or ''}.
local lease = redis.call('HMGET', KEYS[1], 'owner', 'fence')
if lease[2] and tonumber(lease[2]) == tonumber(ARGV[1]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
        redis.call('PEXPIRE', KEYS[2], ARGV[2])
    end
    return {1}
end
return {0, lease[1] or ''}
