-- The start of every message queue script but delete (message.rs prepends
-- it, after guard.lua): the queue keys and what the scripts do with them.
-- A script reads and checks what it needs first, then writes.
-- KEYS: queue (id -> arrival seq), expiry (id -> expiry ms), meta (seq,
-- dropped), bodies (id -> stored-at header + body). A body is a field of one
-- hash rather than a key of its own: a batch writes its bodies with one
-- HSET and a page reads them with one HMGET. Expired bodies go when a script
-- next meets their queue (settle), or with the queue's keys, which expire
-- with the last message.
-- ARGV belongs to the script.
local queue, expiry, meta, bodies = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = now_ms()

-- `cmd key item...` for all items, in slices of 1000 (unpack is bounded by
-- Lua's C stack), each a checked read (the first write of a script is
-- checked too: a key of the wrong type fails it before anything changed).
-- Returns the replies of a single slice as they are, or of several as one
-- list (ZMSCORE, HMGET); for integer replies (HSET, ZADD, ZREM), their sum.
-- No items: no command, an empty list.
local function each(cmd, key, items)
    if #items == 0 then
        return {}
    elseif #items <= 1000 then
        return read('queue', cmd, key, unpack(items))
    end
    local replies, sum = {}, 0
    for i = 1, #items, 1000 do
        local reply = read('queue', cmd, key, unpack(items, i, math.min(i + 999, #items)))
        if type(reply) == 'number' then
            sum = sum + reply
        else
            for j = 1, #reply do
                replies[i + j - 1] = reply[j]
            end
        end
    end
    return #replies > 0 and replies or sum
end

-- The ids whose expiry has passed, as a list and as a set.
local function expired_ids()
    local expired = read('queue', 'ZRANGEBYSCORE', expiry, '-inf', int(now))
    local is_expired = {}
    for _, id in ipairs(expired) do
        is_expired[id] = true
    end
    return expired, is_expired
end

-- The counters, checked: seq (the last arrival sequence) and dropped.
local function counters()
    local values = read('queue', 'HMGET', meta, 'seq', 'dropped')
    return stored_int('queue', 'seq', values[1]) or 0, stored_int('queue', 'dropped', values[2]) or 0
end

-- Reads the queue from the oldest on, in slices, and splits it into live
-- ids and gone ones (expired, or whose body was deleted or evicted outside
-- the library). Stops after `want` live ids (nil: the whole queue). With
-- `with_bodies`, also returns the live ones' bodies; else it learns which
-- bodies are there from the field names alone.
local function scan(want, is_expired, with_bodies)
    local live, held, gone, from, present = {}, {}, {}, 0, nil
    while not want or #live < want do
        local n = want and math.min(1000, want - #live) or 1000
        local ids = read('queue', 'ZRANGE', queue, int(from), int(from + n - 1))
        if #ids == 0 then
            break
        end
        local found
        if with_bodies then
            found = read('queue', 'HMGET', bodies, unpack(ids))
        elseif not present then
            present = {}
            for _, id in ipairs(read('queue', 'HKEYS', bodies)) do
                present[id] = true
            end
        end
        for j, id in ipairs(ids) do
            local body
            if found then
                body = found[j]
            else
                body = present[id]
            end
            if is_expired[id] or not body then
                gone[#gone + 1] = id
            else
                live[#live + 1] = id
                held[#live] = body
            end
        end
        from = from + #ids
    end
    return live, gone, held
end

-- Removes messages, bodies first: in a script that has not read the bodies
-- hash this is its first write, and a hash of the wrong type fails it
-- (read() names it) before anything changed. Returns how many ids left the
-- queue.
local function remove(ids)
    if #ids == 0 then
        return 0
    end
    each('HDEL', bodies, ids)
    local removed = each('ZREM', queue, ids)
    each('ZREM', expiry, ids)
    return removed
end

-- Removes the expired messages and the gone ones a scan found.
local function settle(expired, gone)
    for _, id in ipairs(gone) do
        expired[#expired + 1] = id
    end
    return remove(expired)
end

-- The queue keys live as long as the last message, so a queue whose
-- messages have all expired disappears without anyone reading it. `at` is
-- an expiry score as Redis returns it. This runs after writes, so it must
-- not fail: a score we did not write (a fraction, inf) is rounded into what
-- PEXPIREAT takes.
local function expire_at(at)
    if #at > 16 or not string.find(at, '^%d+$') then
        at = int(math.max(0, math.min(math.floor(tonumber(at)), 9007199254740991)))
    end
    for _, key in ipairs({queue, expiry, meta, bodies}) do
        redis.call('PEXPIREAT', key, at)
    end
end

local function expire_with_last_message()
    local last = redis.call('ZRANGE', expiry, '-1', '-1', 'WITHSCORES')
    if last[2] then
        expire_at(last[2])
    end
end

