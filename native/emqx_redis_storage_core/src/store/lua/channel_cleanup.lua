-- Removes every registry entry of one slot that points at a dead node.
-- KEYS: channels of one slot
-- ARGV: node
-- Returns the number removed.
local removed = 0
local cursor = '0'
repeat
    -- Only the first HSCAN can meet a wrong type, before any HDEL.
    local page = read('channel', 'HSCAN', KEYS[1], cursor, 'COUNT', 1000)
    cursor = page[1]
    local entries = page[2]
    for i = 1, #entries, 2 do
        if entries[i + 1] == ARGV[1] then
            removed = removed + redis.call('HDEL', KEYS[1], entries[i])
        end
    end
until cursor == '0'
return removed
