-- The number of live messages; drops the gone ones it meets, so that it
-- agrees with what message_get returns.
local expired, is_expired = expired_ids()
counters()
local live, gone = scan(nil, is_expired, false)
settle(expired, gone)
return #live
