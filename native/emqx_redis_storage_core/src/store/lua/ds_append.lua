-- Appends one entry (a persist call's messages for this stream, ds.rs) to
-- a stream, trims what retention lets go, and publishes the stream's new
-- last entry id on the appends channel.
-- KEYS: the stream
-- ARGV: appends channel, the stream's first level, its shard, the oldest
--       id to keep, the entry
-- Returns the entry's id.
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'stream' and kind ~= 'none' then
    corrupt('durable_stream', 'wrong type')
end
local last = redis.call('XADD', KEYS[1], '*', 'm', ARGV[5])
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[4])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\0' .. ARGV[3] .. '\0' .. last)
return last
