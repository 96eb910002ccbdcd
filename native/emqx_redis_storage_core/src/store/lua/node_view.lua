-- The membership as it is now (read only).
-- KEYS: members, incarnations
-- Returns the view (node_prelude.lua) with status 1.
local list = read_members()
return view(1, list)
