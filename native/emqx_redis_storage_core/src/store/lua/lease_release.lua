-- Gives the lease up if it is held with this fence; a lease already gone is fine.
-- KEYS: lease, lease owners of the client's slot
-- ARGV: fence, client id
-- Returns {1} or {0, current owner}.
local owner, fence = read_lease()
read('lease_owner', 'HGET', KEYS[2], ARGV[2])
if not fence or fence == tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[1])
    redis.call('HDEL', KEYS[2], ARGV[2])
    return {1}
end
return {0, owner}
