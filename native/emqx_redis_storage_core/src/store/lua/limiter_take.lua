-- Takes tokens from a token bucket (limiter.rs).
-- KEYS[1]: the bucket, a hash: `m` milli-tokens at `at` (Redis ms).
-- ARGV: rate (tokens per second), burst, cost, want (cost, plus what the
-- node takes ahead for its local batch).
-- Tokens come back at `rate` per second, that is `rate` milli-tokens per
-- ms, up to `burst`; a missing key is a full bucket. Only Redis's clock is
-- read. If the bucket holds `cost` tokens, takes `want` of them or as many
-- as it holds, and the key expires when the bucket would be full again.
-- Reply: {taken, tokens left, ms until `cost` tokens are there}, taken 0
-- when limited.
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local cost, want = tonumber(ARGV[3]), tonumber(ARGV[4])
local full = burst * 1000
local stored = read('limiter', 'HMGET', KEYS[1], 'm', 'at')
local m = stored_int('limiter', 'm', stored[1])
local at = stored_int('limiter', 'at', stored[2])
if (m == nil) ~= (at == nil) then
    corrupt('limiter', 'a bucket without m or at')
end
local now = now_ms()
if m == nil then
    m = full
else
    -- A clock that went back (a failover) gives nothing back; an old `at`
    -- gives at most a full bucket (and no overflow).
    local elapsed = math.min(math.max(now - at, 0), math.ceil(full / rate))
    m = math.min(full, m + elapsed * rate)
end
local need = cost * 1000
if m < need then
    return {0, math.floor(m / 1000), math.ceil((need - m) / rate)}
end
local taken = math.min(want, math.floor(m / 1000))
m = m - taken * 1000
if m < full then
    redis.call('HSET', KEYS[1], 'm', int(m), 'at', int(now))
    redis.call('PEXPIRE', KEYS[1], int(math.ceil((full - m) / rate)))
end
return {taken, math.floor(m / 1000), 0}
