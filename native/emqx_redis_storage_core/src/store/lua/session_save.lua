-- Saves a session and its index entry atomically.
-- KEYS: session, fence, session index of the client's slot
-- ARGV: client id, data, ttl ms, node, fence ('' = unfenced)
-- Returns {1, created_at, updated_at, expires_at} or {0, newest fence}.
-- A session whose created_at is not what we wrote is refused (corrupt), not
-- overwritten: delete_session removes it whatever it holds.
local created = stored_int('session', 'created_at', read('session', 'HGET', KEYS[1], 'created_at'))
-- An unfenced save leaves the fence key alone, whatever it holds.
local fenced = ARGV[5] ~= ''
local newest = fenced and stored_int('fence', 'fence', read('fence', 'GET', KEYS[2])) or 0
-- The index is written below: a key of the wrong type must fail here.
read('session_index', 'ZSCORE', KEYS[3], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
if fenced then
    if tonumber(ARGV[5]) < newest then
        return {0, newest}
    end
    -- The fence is remembered as long as the session lives.
    if newest > 0 and redis.call('PTTL', KEYS[2]) < ttl then
        redis.call('PEXPIRE', KEYS[2], ttl)
    end
end
created = created or now
local expires = now + ttl
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'created_at', created,
    'updated_at', now, 'expires_at', expires, 'node', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl)
-- Reclaim index entries of sessions of this slot that expired meanwhile.
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[3], expires, ARGV[1])
return {1, created, now, expires}
