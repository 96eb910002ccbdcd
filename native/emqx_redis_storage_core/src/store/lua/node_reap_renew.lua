-- Extends a reap lease still held with this fence and not yet ended.
-- KEYS: members, incarnations, reap leases
-- ARGV: node, fence, lease ms
-- Returns {1, until} or {0}.
local lease = read_reap_lease(ARGV[1])
if lease and lease[1] == tonumber(ARGV[2]) and lease[2] > now then
    local until_ = now + tonumber(ARGV[3])
    redis.call('HSET', KEYS[3], ARGV[1], lease[1] .. ' ' .. until_ .. ' ' .. lease[3])
    return {1, until_}
end
return {0}
