-- The number of live messages; drops the gone ones it meets, so that it
-- agrees with what message_get returns.
local live, gone = scan(nil)
settle(gone)
return #live
