-- Adds routes to one shard: keeps the shard's trie of wildcard-filter
-- prefixes, bumps the shard version and publishes each change.
-- Dests of a filter are kept NUL-separated (MQTT strings cannot hold NUL).
-- Returns {number added, version}; a route already there is left alone.
local function has(joined, dest)
    local from = 1
    while true do
        local stop = string.find(joined, '\0', from, true)
        if string.sub(joined, from, (stop or 0) - 1) == dest then return true end
        if not stop then return false end
        from = stop + 1
    end
end

local added = 0
for i = 3, #ARGV, 2 do
    local filter, dest = ARGV[i], ARGV[i + 1]
    local current = redis.call('HGET', KEYS[1], filter)
    if not (current and has(current, dest)) then
        if current then
            redis.call('HSET', KEYS[1], filter, current .. '\0' .. dest)
        else
            redis.call('HSET', KEYS[1], filter, dest)
            if is_wildcard(filter) then
                for _, prefix in ipairs(prefixes(filter)) do
                    redis.call('HINCRBY', KEYS[2], prefix, 1)
                end
            end
        end
        added = added + 1
        version = redis.call('HINCRBY', KEYS[1], '\0v', 1)
        redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. version .. ' +' .. filter .. '\0' .. dest)
    end
end
return {added, version}
