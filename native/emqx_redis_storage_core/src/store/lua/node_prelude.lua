-- The start of the node scripts (nodes.rs prepends it, after guard.lua).
-- KEYS[1]: members (zset: node -> heartbeat deadline, Redis ms),
-- KEYS[2]: incarnations (hash: node -> incarnation). Every member has an
-- incarnation and every incarnation a member: a node's entry is both or neither.

local now = now_ms()

-- Every member as {node, deadline, incarnation}, and the same by node.
local function read_members()
    local flat = read('node', 'ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
    local pairs_ = read('node', 'HGETALL', KEYS[2])
    local incarnation = {}
    for i = 1, #pairs_, 2 do
        incarnation[pairs_[i]] = stored_int('node', 'incarnation', pairs_[i + 1])
    end
    local list, by_node = {}, {}
    for i = 1, #flat, 2 do
        local inc = incarnation[flat[i]]
        if not inc then
            corrupt('node', 'a member without incarnation')
        end
        local m = {flat[i], tonumber(flat[i + 1]), inc}
        list[#list + 1] = m
        by_node[flat[i]] = m
    end
    if #list * 2 ~= #pairs_ then
        corrupt('node', 'an incarnation without member')
    end
    return list, by_node
end

-- The reply of the scripts that show the membership: status, now, then
-- node, deadline, incarnation of each member.
local function view(status, list)
    local reply = {status, now}
    for _, m in ipairs(list) do
        reply[#reply + 1] = m[1]
        reply[#reply + 1] = m[2]
        reply[#reply + 1] = m[3]
    end
    return reply
end

-- The last incarnation or fence issued (KEYS[n]).
local function read_sequence(n)
    return stored_int('node', 'sequence', read('node', 'GET', KEYS[n])) or 0
end

-- A node's reap lease (KEYS[3]) as {fence, until, owner}, or nil.
local function read_reap_lease(node)
    local stored = read('node_reap', 'HGET', KEYS[3], node)
    if not stored then
        return nil
    end
    local fence, until_, owner = string.match(stored, '^(%d+) (%d+) (.*)$')
    if not fence then
        corrupt('node_reap', 'not "<fence> <until> <owner>"')
    end
    return {stored_int('node_reap', 'fence', fence), stored_int('node_reap', 'until', until_), owner}
end
