-- Removes one message; an id that is not queued is fine. Expired messages
-- are left to the other scripts: an ack reads only what it changes.
-- ARGV[1]: message id. Returns 1 if it was queued, else 0.
local id = ARGV[1]
read('queue', 'ZCARD', queue)
-- If this message holds the last expiry, the queue keys expire with the
-- one before it from now on.
local holds_last = read('queue', 'ZRANGE', expiry, '-1', '-1')[1] == id
counters()
local queued = remove({id})
if holds_last then
    expire_with_last_message()
end
return queued
