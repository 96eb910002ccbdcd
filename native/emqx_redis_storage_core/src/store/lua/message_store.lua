-- Queues messages in the order of this call, after those queued before.
-- ARGV[1]: max queue length; then per message: id, ttl ms, body.
-- An id that is queued already, or earlier in this call, keeps its place
-- and its body. The oldest messages are dropped (and counted) beyond the
-- max length. Every command covers the whole batch (in slices): a
-- redis.call costs far more than a message.
local max_len = tonumber(ARGV[1])
local len = read('queue', 'ZCARD', queue)
local expired, is_expired = expired_ids()
local seq, dropped = counters()
-- When the queue keys expire: with the last message (-1: never, -2: no
-- queue yet).
local expires_at = redis.call('PEXPIRETIME', bodies)
-- The ids, and where each message starts in ARGV.
local ids, at = {}, {}
for i = 2, #ARGV, 3 do
    ids[#ids + 1] = ARGV[i]
    at[#at + 1] = i
end
-- Queued means: in the queue, not expired, and its body still there (one
-- deleted or evicted outside the library, or an entry left in only one of
-- the sorted sets, is stored again, in a new place). Most ids are new: only
-- those with an expiry to come are looked for in the queue and the bodies.
local scores = read_each('ZMSCORE', expiry, ids)
local to_come = {}
for k, id in ipairs(ids) do
    if scores[k] and not is_expired[id] then
        to_come[#to_come + 1] = id
    end
end
local queued = {}
if #to_come > 0 then
    local seqs, found = read_each('ZMSCORE', queue, to_come), read_each('HMGET', bodies, to_come)
    for j, id in ipairs(to_come) do
        queued[id] = seqs[j] and found[j] and true
    end
end
-- An id stored again takes a new expiry; if it had one (it may have held
-- the last), the last one is looked up again below.
local new, seen, rescored = {}, {}, false
for k, id in ipairs(ids) do
    if not queued[id] and not seen[id] then
        seen[id] = true
        new[#new + 1] = at[k]
        rescored = rescored or scores[k]
    end
end

-- The expired go first: an expired id stored again is new.
len = len - remove(expired)
local max_at, max_ttl
if #new > 0 then
    -- Each body starts with the time it was stored: 8 bytes, big-endian ms.
    local header = struct.pack('>I8', now)
    -- Numbers go to Redis as text: arrival sequence numbers seq + 1 ..
    -- seq + #new in call order; the expiry of each distinct ttl.
    local fields, by_seq, by_expiry, expiries = {}, {}, {}, {}
    for k, i in ipairs(new) do
        local id, ttl = ARGV[i], ARGV[i + 1]
        local expires = expiries[ttl]
        if not expires then
            local ms = now + tonumber(ttl)
            expires = int(ms)
            expiries[ttl] = expires
            if not max_at or ms > max_at then
                max_at, max_ttl = ms, tonumber(ttl)
            end
        end
        fields[2 * k - 1], fields[2 * k] = id, header .. ARGV[i + 2]
        by_seq[2 * k - 1], by_seq[2 * k] = int(seq + k), id
        by_expiry[2 * k - 1], by_expiry[2 * k] = expires, id
    end
    -- Slices of 1000 arguments keep field and value, score and member
    -- together. The first HSET is the first write if none expired: it
    -- refuses a bodies hash of the wrong type before anything changed.
    in_slices(fields, function(...) read('queue', 'HSET', bodies, ...) end)
    in_slices(by_seq, function(...) len = len + redis.call('ZADD', queue, ...) end)
    in_slices(by_expiry, function(...) redis.call('ZADD', expiry, ...) end)
    seq = seq + #new
end
local over = len - max_len
if over > 0 then
    remove(redis.call('ZRANGE', queue, '0', int(over - 1)))
    len, dropped = max_len, dropped + over
end
if #new > 0 or over > 0 then
    redis.call('HSET', meta, 'seq', int(seq), 'dropped', int(dropped))
end
if over > 0 or rescored or expires_at == -1 then
    expire_with_last_message()
elseif max_at and max_at > expires_at then
    -- The keys outlive the new last message by an eighth of its ttl (60 s
    -- at most): a queue stored to steadily moves their expiry once in that
    -- while, not on every store (four commands fewer per call).
    expire_at(int(max_at + math.min(60000, math.floor(max_ttl / 8))))
end
return len
