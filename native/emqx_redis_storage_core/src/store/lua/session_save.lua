-- Saves a session and its index entry atomically.
-- KEYS: session, fence, session index of the client's slot, the session
-- counters (session_counter.lua)
-- ARGV: client id, data, ttl ms, node, fence ('' = unfenced)
-- Returns {1, created_at, updated_at, expires_at} or {0, newest fence}.
-- A session whose created_at is not what we wrote is refused (corrupt), not
-- overwritten: delete_session removes it whatever it holds.
local created = read('session', 'HGET', KEYS[1], 'created_at')
stored_int('session', 'created_at', created)
-- An unfenced save leaves the fence key alone, whatever it holds.
local fenced = ARGV[5] ~= ''
local newest = fenced and stored_int('fence', 'fence', read('fence', 'GET', KEYS[2])) or 0
local ttl = ARGV[3]
if fenced then
    if tonumber(ARGV[5]) < newest then
        return {0, newest}
    end
end
local now = now_ms()
local expires = int(now + tonumber(ttl))
-- The index entry is the first write: a key of the wrong type there fails
-- it, before anything changed (so it is checked by this write).
local new = read('session_index', 'ZADD', KEYS[3], expires, ARGV[1]) == 1
-- A new entry: reclaim the entries of sessions of this slot that expired
-- meanwhile (the index grows by new entries only).
if new then
    count_sessions(4, 1 - redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', int(now)))
end
-- The fence is remembered as long as the session lives.
if newest > 0 and redis.call('PTTL', KEYS[2]) < tonumber(ttl) then
    redis.call('PEXPIRE', KEYS[2], ttl)
end
created = created or int(now)
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'created_at', created,
    'updated_at', int(now), 'expires_at', expires, 'node', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, tonumber(created), now, tonumber(expires)}
