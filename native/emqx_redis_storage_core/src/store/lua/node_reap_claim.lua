-- Takes the lease to reap a dead incarnation of a node, with a new fence.
-- A lease ends at `until` by the Redis clock of this slot; it is given to
-- another reaper only `skew` ms later, so that the reap steps, which check
-- `until` against the clock of their own slot, have stopped by then also on
-- a Cluster whose masters' clocks differ by less than that.
-- KEYS: members, incarnations, reap leases, sequence
-- ARGV: node, incarnation, owner, lease ms, skew ms
-- Returns {1, fence, until}, {0, 'gone'} (no longer a member with this
-- incarnation: reaped already), {0, 'alive'} or {0, 'held', owner}.
local _, by_node = read_members()
local lease = read_reap_lease(ARGV[1])
local last = read_sequence(4)
local m = by_node[ARGV[1]]
if not m or m[3] ~= tonumber(ARGV[2]) then
    return {0, 'gone'}
end
if m[2] > now then
    return {0, 'alive'}
end
if lease and lease[2] + tonumber(ARGV[5]) > now then
    return {0, 'held', lease[3]}
end
local fence = last + 1
local until_ = now + tonumber(ARGV[4])
redis.call('SET', KEYS[4], fence)
redis.call('HSET', KEYS[3], ARGV[1], fence .. ' ' .. until_ .. ' ' .. ARGV[3])
return {1, fence, until_}
