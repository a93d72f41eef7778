-- Cancel one cancellable unit (a single message, or a journey start's delivery to one
-- contact) unless it was already handed to a gateway: the other side of the sender's
-- claim.lua, on the same key, so exactly one of them wins. Every key is in the shard slot T.
--
-- KEYS[1]  p:hv:T:U   hand-over key: absent or "p|<expires ms>" pending, "h" handed, "x", "e"
-- KEYS[2]  p:tm:T     the shard's timers (ARGV[6], a scheduled or deferred "d" timer, removed)
-- KEYS[3]  p:fx:T     the shard's outcome events (ARGV[3] appended, trimmed to ARGV[4])
-- KEYS[4]  p:mh:TN    optional: the contact's message records (ARGV[5]'s set to cancelled)
-- KEYS[5]  p:out:T:GW[:bulk]  optional (with KEYS[4]): the lane holding ARGV[5] as entry
--                      ARGV[7]: acknowledged (group ARGV[8]) and deleted, so no sender spends a
--                      rate slot on it (one that already read it finds the unit cancelled)
-- ARGV[1]  now (ms)   ARGV[2] how long "x" is kept (s)
-- ARGV[3]  the outcome event (json) saying it was cancelled, or ""
-- ARGV[4]  the outcome stream's length to keep (approximately)
-- ARGV[5]  the message id whose record is marked cancelled, or ""
-- ARGV[6]  a timer member to remove, or ""
-- ARGV[7]  the lane entry id (with KEYS[5])      ARGV[8] the lane's consumer group
--
-- The event is appended only when nobody else will report the cancellation: when the timer
-- was removed here, or the record was marked here. Otherwise the unit's event is still on
-- the stream (or in a turn): the turn that reads it reports it, or the sender does.
-- Returns "cancelled" | "handed" (too late) | "already" (cancelled before; a lane entry given
-- is still taken out, for a unit of several messages) | "expired" |
-- "final" (ARGV[5]'s record says its turn finished it unsent: refused, failed, expired).
local v = redis.call('GET', KEYS[1])
if v == 'h' then return 'handed' end
if v == 'e' then return 'expired' end
local m = nil
if KEYS[4] and ARGV[5] ~= '' then
  local raw = redis.call('HGET', KEYS[4], ARGV[5])
  if raw then
    m = cjson.decode(raw)
    -- its turn already finished it without sending (refused by the gate, failed, expired)
    if v ~= 'x' and m['status'] ~= 'queued' and m['status'] ~= 'deferred' then return 'final' end
  end
end
if v == 'x' and not KEYS[5] then return 'already' end
if v ~= 'x' then
  redis.call('SET', KEYS[1], 'x', 'EX', ARGV[2])
end
local told = false
if ARGV[6] ~= '' and redis.call('ZREM', KEYS[2], ARGV[6]) == 1 then
  told = true
end
if m and (m['status'] == 'queued' or m['status'] == 'deferred') then
  local h = m['history']
  if type(h) ~= 'table' then h = {} end
  h[#h + 1] = {'cancelled', tonumber(ARGV[1])}
  m['history'] = h
  m['status'] = 'cancelled'
  redis.call('HSET', KEYS[4], ARGV[5], cjson.encode(m))
  told = true
end
if KEYS[5] and ARGV[7] ~= '' then
  redis.call('XACK', KEYS[5], ARGV[8], ARGV[7])
  redis.call('XDEL', KEYS[5], ARGV[7])
end
if told and ARGV[3] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[3])
end
if v == 'x' then return 'already' end
return 'cancelled'
