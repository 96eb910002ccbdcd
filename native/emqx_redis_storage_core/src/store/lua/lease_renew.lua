-- Extends the lease if it is still held with this fence.
-- KEYS: lease, fence
-- ARGV: fence, lease ms
-- Returns {1} or {0, current owner or ''}.
local owner, fence = read_lease()
-- The fence key may get a longer expiry below: checked like every key written.
read_fence()
if fence and fence == tonumber(ARGV[1]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
        redis.call('PEXPIRE', KEYS[2], ARGV[2])
    end
    return {1}
end
return {0, owner or ''}
