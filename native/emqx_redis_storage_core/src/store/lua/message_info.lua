-- Returns {length, dropped, stored-at header of the oldest message or ''};
-- drops the gone messages it meets, as message_count does.
local live, gone = scan(nil)
local header = ''
if live[1] then
    header = read_named('message', named(live[1]), 'GETRANGE', body_prefix .. live[1], 0, 7)
    if #header < 8 then
        corrupt('message', named(live[1]) .. 'shorter than its header')
    end
end
settle(gone)
return {#live, dropped, header}
