-- One page of the live messages in arrival order; drops the gone ones it
-- meets on the way.
-- ARGV[2], ARGV[3]: first and last rank (inclusive) among live messages.
-- Returns {id1, body1, id2, body2, ...}.
local first, last = tonumber(ARGV[2]), tonumber(ARGV[3])
local live, gone = scan(last + 1)
local page = {}
for i = first + 1, #live do
    local id = live[i]
    -- A body too short for its header is refused by message.rs.
    page[#page + 1] = id
    page[#page + 1] = read_named('message', named(id), 'GET', body_prefix .. id)
end
settle(gone)
return page
