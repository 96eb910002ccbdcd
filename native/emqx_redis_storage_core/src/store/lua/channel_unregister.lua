-- Removes a registry entry only if it still points at this node.
-- KEYS: channels of the client's slot
-- ARGV: client id, node
-- Returns 1 if removed, else 0.
if read('channel', 'HGET', KEYS[1], ARGV[1]) == ARGV[2] then
    return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
