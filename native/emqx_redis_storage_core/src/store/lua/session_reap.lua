-- Drops a client's index entry if its session hash is gone (deleted or
-- evicted outside the library) and still gone: a save may have come in
-- since the caller looked.
-- KEYS: session index of the client's slot, session, the session counters
-- (session_counter.lua)
-- ARGV: client id
-- Returns 1 if the entry was dropped, else 0.
if redis.call('EXISTS', KEYS[2]) == 1 then
    return 0
end
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
count_sessions(3, -removed)
return removed
