-- The start of route_add.lua and route_delete.lua (router.rs prepends it,
-- after guard.lua): what both read and check before their first write.
-- KEYS: routes hash of the shard, trie hash of the shard
-- ARGV: event channel, shard, then pairs: filter, dest
-- Dest lists are not checked here: a write keeps the dests it is not about
-- as they are, and every read checks them (router.rs).

local function is_wildcard(filter)
    return string.find(filter, '+', 1, true) or string.find(filter, '#', 1, true)
end

-- 'a', 'a/+', 'a/+/#' for 'a/+/#': the trie fields of a wildcard filter.
local function prefixes(filter)
    local found, from = {}, 1
    while true do
        local stop = string.find(filter, '/', from, true)
        found[#found + 1] = string.sub(filter, 1, (stop or 0) - 1)
        if not stop then
            return found
        end
        from = stop + 1
    end
end

local version = stored_int('route', 'version', read('route', 'HGET', KEYS[1], '\0v')) or 0
-- The trie counts this call may change must be integers: HINCRBY fails on
-- anything else, and that would be in the middle of the writes.
for i = 3, #ARGV, 2 do
    if is_wildcard(ARGV[i]) then
        local fields = prefixes(ARGV[i])
        for j = 1, #fields, 1000 do
            local counts = read('route_trie', 'HMGET', KEYS[2], unpack(fields, j, math.min(j + 999, #fields)))
            for _, count in ipairs(counts) do
                stored_int('route_trie', 'count', count)
            end
        end
    end
end

