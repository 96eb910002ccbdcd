-- Takes the takeover lease of a client and issues a new fence.
-- KEYS: lease, fence, lease owners of the client's slot
-- ARGV: owner, lease ms, fence ttl ms, client id
-- Returns {1, fence} or {0, current owner}.
local holder = read_lease()
local last = read_fence()
read('lease_owner', 'HGET', KEYS[3], ARGV[4])
if holder and holder ~= ARGV[1] then
    return {0, holder}
end
local now = now_ms()
-- Strictly increasing, also after the fence key expired: never below the
-- server's clock in ms, always above the last fence issued.
local fence = math.max(last + 1, now)
redis.call('SET', KEYS[2], fence, 'PX', math.max(tonumber(ARGV[3]), tonumber(ARGV[2])))
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'fence', fence)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
-- The index a dead owner's leases are found by (nodes.rs). An entry may
-- outlive its lease; a reap or the next owner drops or replaces it.
redis.call('HSET', KEYS[3], ARGV[4], ARGV[1])
return {1, fence}
