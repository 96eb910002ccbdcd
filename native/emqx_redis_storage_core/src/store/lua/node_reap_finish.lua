-- Ends a reap: the dead incarnation stops being a member, and the reap is
-- counted. Only the holder of the lease, before it ends.
-- KEYS: members, incarnations, reap leases, reap counts
-- ARGV: node, incarnation, fence
-- Returns {1, reaps of this node name so far} or {0}.
local _, by_node = read_members()
local lease = read_reap_lease(ARGV[1])
local count = stored_int('node_reap', 'count', read('node_reap', 'HGET', KEYS[4], ARGV[1]))
local m = by_node[ARGV[1]]
if lease and lease[1] == tonumber(ARGV[3]) and lease[2] > now and m and m[3] == tonumber(ARGV[2]) then
    redis.call('ZREM', KEYS[1], ARGV[1])
    redis.call('HDEL', KEYS[2], ARGV[1])
    redis.call('HDEL', KEYS[3], ARGV[1])
    return {1, redis.call('HINCRBY', KEYS[4], ARGV[1], 1)}
end
return {0}
