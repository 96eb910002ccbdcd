-- Which dests have a filter in this shard that matches a topic name.
-- KEYS: routes hash of the shard, trie hash of the shard
-- ARGV: topic name (already validated)
-- Walks the trie of wildcard-filter prefixes level by level, following only
-- the literal level and '+', so the work grows with the topic's levels, not
-- with the number of routes. Builds no patterns from topic text: levels are
-- compared as plain strings. Returns the NUL-joined dest lists it found.
local routes, trie, topic = KEYS[1], KEYS[2], ARGV[1]
local found = {}
local function collect(filter)
    local dests = read('route', 'HGET', routes, filter)
    if dests then found[#found + 1] = dests end
end

collect(topic) -- the exact route

local levels = {}
local from = 1
while true do
    local stop = string.find(topic, '/', from, true)
    levels[#levels + 1] = string.sub(topic, from, (stop or 0) - 1)
    if not stop then break end
    from = stop + 1
end
-- Topics starting with '$' are not matched by a first-level '+' or '#'.
local dollar = string.sub(topic, 1, 1) == '$'

-- Each state is the prefix of a filter matched so far ('' before the first
-- level is the root, kept apart by `root`).
local states = {{prefix = '', root = true}}
for i, level in ipairs(levels) do
    local next_states = {}
    for _, s in ipairs(states) do
        local base = s.root and '' or (s.prefix .. '/')
        local wild = not (s.root and dollar)
        if wild then collect(base .. '#') end
        local literal = base .. level
        if read('route_trie', 'HEXISTS', trie, literal) == 1 then
            next_states[#next_states + 1] = {prefix = literal}
        end
        if wild and level ~= '+' and read('route_trie', 'HEXISTS', trie, base .. '+') == 1 then
            next_states[#next_states + 1] = {prefix = base .. '+'}
        end
    end
    states = next_states
    if #states == 0 then break end
end
for _, s in ipairs(states) do
    -- A wildcard filter that ends here, and '#' matching its parent level.
    if string.find(s.prefix, '+', 1, true) then collect(s.prefix) end
    collect(s.prefix .. '/#')
end
return found
