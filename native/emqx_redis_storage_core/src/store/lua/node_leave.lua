-- A node that stops: its heartbeat ends now, so every node sees it leave at
-- its next heartbeat and one of them reaps it.
-- KEYS: members, incarnations
-- ARGV: node, incarnation
-- Returns 1 if it was alive with this incarnation, else 0.
local _, by_node = read_members()
local me = by_node[ARGV[1]]
if me and me[3] == tonumber(ARGV[2]) and me[2] > now then
    redis.call('ZADD', KEYS[1], 0, ARGV[1])
    return 1
end
return 0
