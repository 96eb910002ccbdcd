-- The session counters, after the script's own keys: KEYS[at] counts the
-- entries of the slot's index, KEYS[at + 1] (given on a single Redis only)
-- is the total of all slots. They follow the index, change by change, in
-- the same script; they are derived from it (count_sessions' sweep sets
-- them again from the index), so a counter that is not an integer fails
-- nothing here.
local function count_sessions(at, delta)
    if delta ~= 0 then
        redis.pcall('INCRBY', KEYS[at], delta)
        if KEYS[at + 1] then
            redis.pcall('INCRBY', KEYS[at + 1], delta)
        end
    end
end
