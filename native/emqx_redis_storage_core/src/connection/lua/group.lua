-- The end of a script's group form (scripts.rs): the script is the local
-- function `call(KEYS, ARGV)` above; this runs it once per call of the
-- group (group.rs).
-- ARGV: number of calls N, then each call's number of keys and number of
-- arguments, then all calls' arguments; KEYS: all calls' keys, in order.
-- Returns two items per call: 1 and its reply (false for nil), or 0 and
-- its error's text.
-- t[from + 1 .. from + count] as a table of its own; unpack builds it at
-- its size at once, but is bounded by Lua's C stack.
local function slice(t, from, count)
    if count <= 4000 then
        return {unpack(t, from + 1, from + count)}
    end
    local part = {}
    for j = 1, count do
        part[j] = t[from + j]
    end
    return part
end

local n = tonumber(ARGV[1])
local replies = {}
local k, a = 0, 1 + 2 * n
for i = 1, n do
    local nk, na = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
    local keys, argv = slice(KEYS, k, nk), slice(ARGV, a, na)
    k, a = k + nk, a + na
    local ok, reply = pcall(call, keys, argv)
    if ok and type(reply) == 'table' and reply.err then
        ok, reply = false, reply
    end
    if ok then
        replies[2 * i - 1], replies[2 * i] = 1, reply or false
    else
        replies[2 * i - 1] = 0
        replies[2 * i] = type(reply) == 'table' and reply.err or tostring(reply)
    end
end
return replies
