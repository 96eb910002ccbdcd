-- Returns {length, dropped, stored-at header of the oldest message or ''};
-- drops the gone messages it meets, as message_count does.
local expired, is_expired = expired_ids()
local _, dropped = counters()
local live, gone = scan(nil, is_expired, false)
local header = ''
if live[1] then
    header = string.sub(read('queue', 'HGET', bodies, live[1]), 1, 8)
    if #header < 8 then
        corrupt('message', named(live[1]) .. 'shorter than its header')
    end
end
settle(expired, gone)
return {#live, dropped, header}
