-- One page of the queue in arrival order.
-- ARGV[2], ARGV[3]: first and last rank (inclusive).
-- Returns {id1, body1, id2, body2, ...}; a body that expired meanwhile is skipped.
local page = {}
for _, id in ipairs(redis.call('ZRANGE', queue, ARGV[2], ARGV[3])) do
    local body = redis.call('GET', body_prefix .. id)
    if body then
        page[#page + 1] = id
        page[#page + 1] = body
    end
end
return page
