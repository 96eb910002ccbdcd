-- Adds a destination to a route filter in its shard, keeps the shard's trie of
-- wildcard-filter prefixes, bumps the shard version and publishes the change.
-- KEYS: routes hash of the shard, trie hash of the shard
-- ARGV: filter, dest, '1' if the filter has wildcards, event channel, shard
-- Dests of a filter are kept NUL-separated (MQTT strings cannot hold NUL).
-- Returns {1, version} if added, {0, version} if it was there already.
local filter, dest = ARGV[1], ARGV[2]
local current = redis.call('HGET', KEYS[1], filter)
if current then
    local from = 1
    while true do
        local stop = string.find(current, '\0', from, true)
        local d = string.sub(current, from, (stop or 0) - 1)
        if d == dest then
            return {0, tonumber(redis.call('HGET', KEYS[1], '\0v') or '0')}
        end
        if not stop then break end
        from = stop + 1
    end
    redis.call('HSET', KEYS[1], filter, current .. '\0' .. dest)
else
    redis.call('HSET', KEYS[1], filter, dest)
    if ARGV[3] == '1' then
        local from = 1
        while true do
            local stop = string.find(filter, '/', from, true)
            redis.call('HINCRBY', KEYS[2], string.sub(filter, 1, (stop or 0) - 1), 1)
            if not stop then break end
            from = stop + 1
        end
    end
end
local version = redis.call('HINCRBY', KEYS[1], '\0v', 1)
redis.call('PUBLISH', ARGV[4], ARGV[5] .. ' ' .. version .. ' +' .. filter .. '\0' .. dest)
return {1, version}
