-- The end of a script's group form (scripts.rs): the script is the local
-- function `call(KEYS, ARGV)` above; this runs it once per call of the
-- group (group.rs).
-- ARGV: number of calls N, then each call's number of keys and number of
-- arguments, then all calls' arguments; KEYS: all calls' keys, in order.
-- Returns per call {1, reply} ({1} for nil) or {0, error text}.
local n = tonumber(ARGV[1])
local replies = {}
local k, a = 0, 1 + 2 * n
for i = 1, n do
    local nk, na = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
    local keys, argv = {}, {}
    for j = 1, nk do
        keys[j] = KEYS[k + j]
    end
    for j = 1, na do
        argv[j] = ARGV[a + j]
    end
    k, a = k + nk, a + na
    local ok, reply = pcall(call, keys, argv)
    if ok and not (type(reply) == 'table' and reply.err) then
        replies[i] = {1, reply}
    elseif type(reply) == 'table' and reply.err then
        replies[i] = {0, reply.err}
    else
        replies[i] = {0, tostring(reply)}
    end
end
return replies
