-- Removes destinations from route filters of one shard, publishing each change.
-- A dest of '\1' .. node .. '\1' (no group) removes every dest of that
-- node: the node itself and its shared-subscription dests.
-- Returns {number removed, version}.
local function prune_trie(filter)
    for _, prefix in ipairs(prefixes(filter)) do
        if redis.call('HINCRBY', KEYS[2], prefix, -1) <= 0 then
            redis.call('HDEL', KEYS[2], prefix)
        end
    end
end

-- Does stored dest d fall under the removal pattern?
local function hit(d, pattern)
    if d == pattern then return true end
    local plen = string.len(pattern)
    if plen > 2 and string.byte(pattern, 1) == 1 and string.byte(pattern, plen) == 1 then
        return d == string.sub(pattern, 2, plen - 1) or string.sub(d, 1, plen) == pattern
    end
    return false
end

local removed = 0
for i = 3, #ARGV, 2 do
    local filter, pattern = ARGV[i], ARGV[i + 1]
    local current = redis.call('HGET', KEYS[1], filter)
    if current then
        local keep = {}
        local from = 1
        while true do
            local stop = string.find(current, '\0', from, true)
            local d = string.sub(current, from, (stop or 0) - 1)
            if hit(d, pattern) then
                removed = removed + 1
                version = redis.call('HINCRBY', KEYS[1], '\0v', 1)
                redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. version .. ' -' .. filter .. '\0' .. d)
            else
                keep[#keep + 1] = d
            end
            if not stop then break end
            from = stop + 1
        end
        if #keep == 0 then
            redis.call('HDEL', KEYS[1], filter)
            if is_wildcard(filter) then prune_trie(filter) end
        else
            redis.call('HSET', KEYS[1], filter, table.concat(keep, '\0'))
        end
    end
end
return {removed, version}
