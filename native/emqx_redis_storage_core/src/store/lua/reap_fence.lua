-- The start of a reaper's step (nodes.rs): the last ARGV is the end of the
-- reaper's lease, in Redis ms. After it another reaper may have taken over
-- and finished, and a new incarnation of the node may have written entries
-- under the same name: the step refuses before it reads or writes anything.
local reap_until = tonumber(table.remove(ARGV))
if now_ms() >= reap_until then
    return redis.error_reply('STALE_REAPER the reap lease has ended')
end
