-- Appends messages to one stream (ds.rs), trims what retention lets go,
-- and publishes the stream's new last entry id on the appends channel.
-- KEYS: the stream
-- ARGV: appends channel, the stream's first level, its shard, the oldest
--       id to keep, then one entry value per message
-- Returns the last entry id.
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'stream' and kind ~= 'none' then
    corrupt('durable_stream', 'wrong type')
end
local last
for i = 5, #ARGV do
    last = redis.call('XADD', KEYS[1], '*', 'm', ARGV[i])
end
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[4])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\0' .. ARGV[3] .. '\0' .. last)
return last
