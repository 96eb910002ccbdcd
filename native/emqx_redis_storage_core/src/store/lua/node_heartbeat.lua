-- Renews a member's heartbeat if it is still this incarnation and alive.
-- KEYS: members, incarnations
-- ARGV: node, incarnation, ttl ms
-- Returns the view (node_prelude.lua) with status 1 (renewed) or 0 (this
-- incarnation was declared dead, or reaped: it must join again).
local list, by_node = read_members()
local me = by_node[ARGV[1]]
if me and me[3] == tonumber(ARGV[2]) and me[2] > now then
    me[2] = now + tonumber(ARGV[3])
    redis.call('ZADD', KEYS[1], me[2], ARGV[1])
    return view(1, list)
end
return view(0, list)
