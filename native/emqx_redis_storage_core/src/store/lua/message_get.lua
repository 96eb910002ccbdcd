-- One page of the live messages in arrival order; drops the gone ones it
-- meets on the way.
-- ARGV[1], ARGV[2]: first and last rank (inclusive) among live messages.
-- Returns {id1, body1, id2, body2, ...}.
local first, last = tonumber(ARGV[1]), tonumber(ARGV[2])
local expired, is_expired = expired_ids()
counters()
local live, gone, held = scan(last + 1, is_expired, true)
local page = {}
for i = first + 1, #live do
    -- A body too short for its header is refused by message.rs.
    page[#page + 1] = live[i]
    page[#page + 1] = held[i]
end
settle(expired, gone)
return page
