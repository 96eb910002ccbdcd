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
-- Message k is ARGV[3k - 1] (id), ARGV[3k] (ttl ms), ARGV[3k + 1] (body).
local n = (#ARGV - 1) / 3
local ids = {}
for k = 1, n do
    ids[k] = ARGV[3 * k - 1]
end
-- Queued means: in the queue, not expired, and its body still there (one
-- deleted or evicted outside the library, or an entry left in only one of
-- the sorted sets, is stored again, in a new place). Most ids are new: only
-- those with an expiry to come are looked for in the queue and the bodies.
local scores = each('ZMSCORE', expiry, ids)
local to_come
for k = 1, n do
    if scores[k] and not is_expired[ids[k]] then
        to_come = to_come or {}
        to_come[#to_come + 1] = ids[k]
    end
end
-- The ids not to store: queued already, or stored earlier in this call.
local taken = {}
if to_come then
    local seqs, found = each('ZMSCORE', queue, to_come), each('HMGET', bodies, to_come)
    for j, id in ipairs(to_come) do
        taken[id] = seqs[j] and found[j] and true
    end
end

-- The expired go first: an expired id stored again is new.
len = len - remove(expired)
-- Numbers go to Redis as text: arrival sequence numbers seq + 1 ..
-- seq + new in call order; each message's expiry. Each body starts with
-- the time it was stored: 8 bytes, big-endian ms.
local header = struct.pack('>I8', now)
local fields, by_seq, by_expiry = {}, {}, {}
-- An id stored again takes a new expiry; if it had one (it may have held
-- the last), the last one is looked up again below.
local new, rescored, max_at, max_ttl, ttl, expires = 0, false, nil, nil, nil, nil
for k = 1, n do
    local id = ids[k]
    if not taken[id] then
        taken[id] = true
        rescored = rescored or scores[k]
        if ARGV[3 * k] ~= ttl then
            ttl = ARGV[3 * k]
            local ms = now + tonumber(ttl)
            expires = int(ms)
            if not max_at or ms > max_at then
                max_at, max_ttl = ms, tonumber(ttl)
            end
        end
        new = new + 1
        fields[2 * new - 1], fields[2 * new] = id, header .. ARGV[3 * k + 1]
        by_seq[2 * new - 1], by_seq[2 * new] = int(seq + new), id
        by_expiry[2 * new - 1], by_expiry[2 * new] = expires, id
    end
end
if new > 0 then
    -- Slices of 1000 arguments keep field and value, score and member
    -- together. The first HSET is the first write if none expired: it
    -- refuses a bodies hash of the wrong type before anything changed.
    each('HSET', bodies, fields)
    len = len + each('ZADD', queue, by_seq)
    each('ZADD', expiry, by_expiry)
    seq = seq + new
end
local over = len - max_len
if over > 0 then
    remove(redis.call('ZRANGE', queue, '0', int(over - 1)))
    len, dropped = max_len, dropped + over
end
if new > 0 or over > 0 then
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
