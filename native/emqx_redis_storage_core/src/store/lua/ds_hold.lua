-- Counts a client in (op '+') or out (op '-') of the holders of a durable
-- filter (ds.rs). The filters hash keeps filter -> number of holders; when
-- a filter appears or goes, the shard's version is bumped and the change
-- published, in this script, as route changes are (mirror.rs).
-- KEYS: the shard's filters hash, the filter's holders set
-- ARGV: event channel, shard, filter, client id, op
-- Returns the number of holders now; doing it twice changes nothing.
local filter, op = ARGV[3], ARGV[5]
local version = stored_int('durable_filter', 'version', read('durable_filter', 'HGET', KEYS[1], '\0v')) or 0
local count = stored_int('durable_filter', 'count', read('durable_filter', 'HGET', KEYS[1], filter)) or 0
if read('durable_filter', 'SCARD', KEYS[2]) ~= count then
    corrupt('durable_filter', 'count is not the number of holders')
end
local held = read('durable_filter', 'SISMEMBER', KEYS[2], ARGV[4]) == 1
if held == (op == '+') then
    return count
end
if op == '+' then
    redis.call('SADD', KEYS[2], ARGV[4])
    count = count + 1
    redis.call('HSET', KEYS[1], filter, count)
else
    redis.call('SREM', KEYS[2], ARGV[4])
    count = count - 1
    if count == 0 then
        redis.call('HDEL', KEYS[1], filter)
    else
        redis.call('HSET', KEYS[1], filter, count)
    end
end
if count == (op == '+' and 1 or 0) then
    version = redis.call('HINCRBY', KEYS[1], '\0v', 1)
    redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. version .. ' ' .. op .. filter .. '\0')
end
return count
