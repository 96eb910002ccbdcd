-- Queues messages in the order of this call, after those queued before.
-- ARGV[2]: max queue length; then per message: id, ttl ms, body.
-- An id that is queued already, or earlier in this call, keeps its place
-- and its body. The oldest messages are dropped (and counted) beyond the
-- max length. Apart from the SET of each body, every command covers the
-- whole batch (in slices): a redis.call costs far more than a message.
local max_len = tonumber(ARGV[2])
-- Each body starts with the time it was stored: 8 bytes, big-endian ms.
local stored_at = {}
local n = now
for i = 8, 1, -1 do
    stored_at[i] = n % 256
    n = math.floor(n / 256)
end
stored_at = string.char(unpack(stored_at))
-- The ids, and where each message starts in ARGV.
local ids, at = {}, {}
for i = 3, #ARGV, 3 do
    ids[#ids + 1] = ARGV[i]
    at[#at + 1] = i
end
-- The scores of the ids in a sorted set, in slices.
local function scores_in(key)
    local scores = {}
    for i = 1, #ids, 1000 do
        local slice = redis.call('ZMSCORE', key, unpack(ids, i, math.min(i + 999, #ids)))
        for j = 1, #slice do
            scores[i + j - 1] = slice[j]
        end
    end
    return scores
end
local seqs, scores = scores_in(queue), scores_in(expiry)
-- Queued means: in the queue, not expired, and its body still there (one
-- deleted or evicted outside the library, or an entry left in only one of
-- the sorted sets, is stored again, in a new place).
local new, seen = {}, {}
for k, id in ipairs(ids) do
    local queued = seqs[k] and scores[k] and tonumber(scores[k]) > now
        and redis.call('EXISTS', body_prefix .. id) == 1
    if not queued and not seen[id] then
        seen[id] = true
        new[#new + 1] = at[k]
    end
end
settle({})
if #new > 0 then
    -- Arrival sequence numbers first + 1 .. first + #new, in call order.
    local first = redis.call('HINCRBY', meta, 'seq', #new) - #new
    local by_seq, by_expiry, expires = {}, {}, {}
    for k, i in ipairs(new) do
        expires[k] = now + tonumber(ARGV[i + 1])
        by_seq[2 * k - 1], by_seq[2 * k] = first + k, ARGV[i]
        by_expiry[2 * k - 1], by_expiry[2 * k] = expires[k], ARGV[i]
    end
    -- Slices of 1000 arguments keep score and member together.
    in_slices(by_seq, function(...) redis.call('ZADD', queue, ...) end)
    in_slices(by_expiry, function(...) redis.call('ZADD', expiry, ...) end)
    for k, i in ipairs(new) do
        redis.call('SET', body_prefix .. ARGV[i], stored_at .. ARGV[i + 2], 'PXAT', expires[k])
    end
end
local over = redis.call('ZCARD', queue) - max_len
if over > 0 then
    remove(redis.call('ZRANGE', queue, 0, over - 1))
    redis.call('HINCRBY', meta, 'dropped', over)
end
expire_with_last_message()
return redis.call('ZCARD', queue)
