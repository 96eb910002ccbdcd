-- The start of every script (scripts.rs prepends it): how a script checks
-- what it reads. Redis does not undo a script's writes when it fails, so a
-- script reads and checks everything first; a failed check aborts it with
-- `CORRUPT <kind> <detail>` (error.rs) before its first write.

local function corrupt(kind, detail)
    error({err = 'CORRUPT ' .. kind .. ' ' .. detail})
end

-- redis.call for a read: a key of the wrong type is corrupt data of `kind`
-- (named here, where the key is known), not a WRONGTYPE of the whole script.
-- `what` starts the detail (a message id: '<id>: '), or is ''.
local function read_named(kind, what, ...)
    local reply = redis.pcall(...)
    if type(reply) == 'table' and reply.err then
        if string.sub(reply.err, 1, 9) == 'WRONGTYPE' then
            corrupt(kind, what .. 'wrong type')
        end
        error(reply)
    end
    return reply
end

local function read(kind, ...)
    return read_named(kind, '', ...)
end

-- How a detail names what is corrupt (a message id: any bytes, up to 64 KiB):
-- its first 100 bytes, escaped as Rust's escape_ascii does (message.rs names
-- ids the same way). An error reply must be one line of text.
local escapes = {[9] = '\\t', [10] = '\\n', [13] = '\\r', [34] = '\\"', [39] = "\\'", [92] = '\\\\'}
local function named(id)
    local shown = string.gsub(string.sub(id, 1, 100), '[%z\1-\31\34\39\92\127-\255]', function(c)
        return escapes[string.byte(c)] or string.format('\\x%02x', string.byte(c))
    end)
    return shown .. ': '
end

-- A stored integer as we write them: decimal, no sign, no leading zero,
-- at most 2^53 - 1 (beyond it Lua's doubles lose digits). nil stays nil.
local function stored_int(kind, what, value)
    if not value then
        return nil
    end
    if not (value == '0' or string.find(value, '^[1-9]%d*$')) or #value > 16
        or tonumber(value) > 9007199254740991 then
        corrupt(kind, what .. ' is not an integer')
    end
    return tonumber(value)
end


-- Redis's clock in ms, read once per script call: a group form (group.rs)
-- runs many calls in one script call, and they share it.
local clock
local function now_ms()
    if not clock then
        local t = redis.call('TIME')
        clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    return clock
end

-- An integer as text for redis.call: a Lua number passed as it is would be
-- formatted as a float ("%.14g"), which costs far more.
local function int(n)
    return string.format('%d', n)
end
