-- Gives the lease up if it is held with this fence; a lease already gone is fine.
-- KEYS: lease
-- ARGV: fence
-- Returns {1} or {0, current owner}.
local lease = redis.call('HMGET', KEYS[1], 'owner', 'fence')
if not lease[2] or tonumber(lease[2]) == tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[1])
    return {1}
end
return {0, lease[1]}
