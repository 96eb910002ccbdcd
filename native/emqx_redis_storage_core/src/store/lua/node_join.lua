-- Makes a node a member with a new incarnation, unless an earlier
-- incarnation of its name is still a member: that one is gone now (declared
-- dead at once if its heartbeat had not expired), and must be reaped first,
-- so that no reaper of it can remove what the new one writes under the name.
-- KEYS: members, incarnations, sequence
-- ARGV: node, ttl ms
-- Returns {1, incarnation} (joined) or {0, earlier incarnation} (reap it first).
local _, by_node = read_members()
local last = read_sequence(3)
local earlier = by_node[ARGV[1]]
if earlier then
    if earlier[2] > now then
        redis.call('ZADD', KEYS[1], 0, ARGV[1])
    end
    return {0, earlier[3]}
end
local incarnation = last + 1
redis.call('SET', KEYS[3], incarnation)
redis.call('HSET', KEYS[2], ARGV[1], incarnation)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return {1, incarnation}
