-- The start of the lease scripts (session.rs prepends it, after guard.lua).
-- KEYS[1]: the lease hash; KEYS[2] (acquire, renew): the fence string.

-- The lease as stored: owner and fence, both or neither (no lease).
local function read_lease()
    local fields = read('lease', 'HMGET', KEYS[1], 'owner', 'fence')
    local owner, fence = fields[1], stored_int('lease', 'fence', fields[2])
    if (not owner) ~= (not fence) or owner == '' then
        corrupt('lease', 'owner and fence do not go together')
    end
    return owner or nil, fence
end

-- The last fence issued for the client, or 0.
local function read_fence()
    return stored_int('fence', 'fence', read('fence', 'GET', KEYS[2])) or 0
end

