-- Gives the lease up if it is held with this fence; a lease already gone is fine.
-- KEYS: lease
-- ARGV: fence
-- Returns {1} or {0, current owner}.
local owner, fence = read_lease()
if not fence or fence == tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[1])
    return {1}
end
return {0, owner}
