-- The start of every message queue script (message.rs prepends it, after
-- guard.lua). It reads and checks the queue keys; each script then does its
-- own reads, and only then writes, starting with settle().
-- KEYS: queue (id -> arrival seq), expiry (id -> expiry ms), meta (seq, dropped)
-- ARGV[1]: the prefix of the client's body keys (a body key is the prefix
-- followed by the message id). Body keys are built here instead of being
-- passed in KEYS: a batch would need one KEYS entry per message, and they
-- carry the client's hash tag, so they are in the slot of KEYS[1] on Redis
-- Cluster as well. The rest of ARGV belongs to the script.
local queue, expiry, meta = KEYS[1], KEYS[2], KEYS[3]
local body_prefix = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

read('queue', 'ZCARD', queue)
-- Expired bodies are gone already (their keys expire at the same time).
local expired = read('queue', 'ZRANGEBYSCORE', expiry, '-inf', now)
local counters = read('queue', 'HMGET', meta, 'seq', 'dropped')
stored_int('queue', 'seq', counters[1])
local dropped = stored_int('queue', 'dropped', counters[2]) or 0
local is_expired = {}
for _, id in ipairs(expired) do
    is_expired[id] = true
end

-- Calls fn(...) with the items in slices: unpack is bounded by Lua's C stack.
local function in_slices(items, fn)
    for i = 1, #items, 1000 do
        fn(unpack(items, i, math.min(i + 999, #items)))
    end
end

local function body_keys(ids)
    local keys = {}
    for i, id in ipairs(ids) do
        keys[i] = body_prefix .. id
    end
    return keys
end

-- Reads the queue from the oldest on, in slices, and splits it into live
-- ids and gone ones (expired, or whose body was deleted or evicted outside
-- the library). Stops after `want` live ids (nil: the whole queue).
local function scan(want)
    local live, gone, from = {}, {}, 0
    while not want or #live < want do
        local n = want and math.min(1000, want - #live) or 1000
        local ids = redis.call('ZRANGE', queue, from, from + n - 1)
        if #ids == 0 then
            break
        end
        -- One EXISTS for the slice; one per id only if some body is missing.
        local all_there = redis.call('EXISTS', unpack(body_keys(ids))) == #ids
        for _, id in ipairs(ids) do
            if is_expired[id] or not (all_there or redis.call('EXISTS', body_prefix .. id) == 1) then
                gone[#gone + 1] = id
            else
                live[#live + 1] = id
            end
        end
        from = from + #ids
    end
    return live, gone
end

-- Removes messages from the queue, with their bodies.
local function remove(ids)
    in_slices(ids, function(...)
        redis.call('ZREM', queue, ...)
        redis.call('ZREM', expiry, ...)
    end)
    in_slices(body_keys(ids), function(...) redis.call('DEL', ...) end)
end

-- The first write of every script: drops the expired messages and the
-- gone ones a scan found.
local function settle(gone)
    remove(gone)
    if #expired > 0 then
        in_slices(expired, function(...) redis.call('ZREM', queue, ...) end)
        redis.call('ZREMRANGEBYSCORE', expiry, '-inf', now)
    end
end

-- The queue keys live as long as the last message that expires, so a queue
-- whose messages have all expired disappears without anyone reading it.
-- It runs after writes, so it must not fail: a score we did not write (a
-- fraction, inf) is rounded into what PEXPIREAT takes.
local function expire_with_last_message()
    local last = redis.call('ZRANGE', expiry, -1, -1, 'WITHSCORES')
    if last[2] then
        local at = math.max(0, math.min(math.floor(tonumber(last[2])), 9007199254740991))
        redis.call('PEXPIREAT', queue, at)
        redis.call('PEXPIREAT', expiry, at)
        redis.call('PEXPIREAT', meta, at)
    end
end

