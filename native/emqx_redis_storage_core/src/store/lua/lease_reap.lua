-- Releases the leases a dead owner still holds in one slot, and drops its
-- entries from the slot's owner index.
-- KEYS: lease owners of the slot, then the lease of each client
-- ARGV: owner, then each client id (in the order of KEYS[2..])
-- Returns the number of leases released.
local owners, holders = {}, {}
for i = 2, #KEYS do
    owners[i] = read('lease_owner', 'HGET', KEYS[1], ARGV[i])
    holders[i] = read('lease', 'HGET', KEYS[i], 'owner')
end
local released = 0
for i = 2, #KEYS do
    if owners[i] == ARGV[1] then
        if holders[i] == ARGV[1] then
            released = released + redis.call('DEL', KEYS[i])
        end
        redis.call('HDEL', KEYS[1], ARGV[i])
    end
end
return released
