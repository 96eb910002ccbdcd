-- Drops a client's index entry if its session hash is gone (deleted or
-- evicted outside the library) and still gone: a save may have come in
-- since the caller looked.
-- KEYS: session index of the client's slot, session
-- ARGV: client id
-- Returns 1 if the entry was dropped, else 0.
if redis.call('EXISTS', KEYS[2]) == 1 then
    return 0
end
return redis.call('ZREM', KEYS[1], ARGV[1])
