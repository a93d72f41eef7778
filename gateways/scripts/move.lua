-- Fail one message over to the next connector of its route: queue it there and take it off here,
-- atomically, so it is in exactly one connector's lane at any time (never sent by two).
--
-- Called only through MoveArgs (move.py) beside this file, which builds the KEYS and ARGV below.
--
-- Every key is in the contact's shard slot (tag T): both lanes are shard S's.
--
-- KEYS[1]  p:out:T:GW[:bulk]   the lane it is in now
-- KEYS[2]  p:out:T:GW2[:bulk]  the same lane of the next connector, the same shard
-- KEYS[3]  p:mh:TN             message records hash
-- KEYS[4]  p:hv:T:U            optional: the message's hand-over key (a cancellable message),
--                              named again in its new entry (u), so the next sender checks it too
-- ARGV[1]  consumer group      ARGV[2] entry id here
-- ARGV[3]  message id          ARGV[4] contact        ARGV[5] text
-- ARGV[6]  the rest of the route after GW2 ("a,b" or "")     ARGV[7] queued at (ms)
-- ARGV[8]  now (ms)            ARGV[9] GW2's name    ARGV[10] why (the failure seen at GW)
-- ARGV[11] its send options (field o, engine/core/sendopts.py), carried over; "" for none
-- Returns the new entry id, or "" when the entry was already gone (acknowledged elsewhere).
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return ''
end
redis.call('XDEL', KEYS[1], ARGV[2])
local entry = {'m', ARGV[3], 'c', ARGV[4], 't', ARGV[5], 'r', ARGV[6], 'q', ARGV[7]}
if KEYS[4] then
  entry[#entry + 1] = 'u'
  entry[#entry + 1] = KEYS[4]
end
if ARGV[11] and ARGV[11] ~= '' then
  entry[#entry + 1] = 'o'
  entry[#entry + 1] = ARGV[11]
end
local id = redis.call('XADD', KEYS[2], '*', unpack(entry))
local raw = redis.call('HGET', KEYS[3], ARGV[3])
if raw then
  local m = cjson.decode(raw)
  local h = m['history']
  if type(h) ~= 'table' then h = {} end
  h[#h + 1] = {'rerouted', tonumber(ARGV[8]), ARGV[9] .. ': ' .. ARGV[10]}
  m['history'] = h
  m['gateway'] = ARGV[9]
  redis.call('HSET', KEYS[3], ARGV[3], cjson.encode(m))
end
return id
