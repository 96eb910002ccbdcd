-- Deletes a session and its index entry atomically.
-- KEYS: session, session index of the client's slot
-- ARGV: client id
-- Returns 1 if a session was deleted, else 0.
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
