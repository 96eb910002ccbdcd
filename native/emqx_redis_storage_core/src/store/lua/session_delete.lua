-- Deletes a session and its index entry atomically, whatever the session
-- hash holds (the way out of a corrupt session).
-- KEYS: session, session index of the client's slot, the session counters
-- (session_counter.lua)
-- ARGV: client id
-- Returns 1 if a session was deleted, else 0.
read('session_index', 'ZSCORE', KEYS[2], ARGV[1])
count_sessions(3, -redis.call('ZREM', KEYS[2], ARGV[1]))
return redis.call('DEL', KEYS[1])
