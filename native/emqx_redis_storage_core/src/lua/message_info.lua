-- Returns {length, dropped, stored-at header of the oldest message or ''}.
local header = ''
-- A body may expire a moment before its entry is dropped: take the first
-- one still there.
for _, id in ipairs(redis.call('ZRANGE', queue, 0, 9)) do
    header = redis.call('GETRANGE', body_prefix .. id, 0, 7)
    if header ~= '' then
        break
    end
end
return {redis.call('ZCARD', queue), tonumber(redis.call('HGET', meta, 'dropped') or '0'), header}
