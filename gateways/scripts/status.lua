-- Record a status change of one message (queued -> sent -> delivered / failed / expired ...).
--
-- Called only through StatusArgs (status.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]  p:mh:{N}         message records hash
-- KEYS[2]  p:pid:{GW:K}:B   the provider-id map's current bucket for the id's slot K: field
--                           ARGV[12] -> "N message-id" (only when ARGV[4] is not "")
-- KEYS[3]  p:out:GW[:bulk]  the outbound lane the message came from (only with ARGV[9])
-- KEYS[4]  p:dlrp:{GW:K}:F  a receipt that arrived before we knew the provider id (only with ARGV[4])
-- KEYS[5]  p:fx             flow outcome events: a flow's message that moved to sent or a final
--                           status is reported there (engine/conversation/outcomes.py), trimmed to ARGV[11];
--                           governance = true when it is a STOP/START/HELP answer, not the flow's
-- ARGV[1]  message id   ARGV[2] new status   ARGV[3] now (ms)
-- ARGV[4]  provider message id or ""        ARGV[5] error text or ""
-- ARGV[6]  contact number (E.164)           ARGV[7] TTL of KEYS[2] (s): receipt window after B ends
-- ARGV[8]  consumer group                   ARGV[9] stream entry id to XACK + XDEL, or ""
-- ARGV[10] the gateway that sent it, or "" (recorded when the message was failed over)
-- ARGV[11] the outcome stream's length to keep (approximately)
-- ARGV[12] the provider id as a field of KEYS[2] (itself, or a digest when long: engine/core/idmaps.py)
--
-- A status never moves back: a late "sent" after "delivered" is kept in the history only.
-- A receipt parked under KEYS[4] is applied right after the provider id is recorded.
-- Returns 1, or 0 when the record is gone (trimmed from the log or erased).
local RANK = {queued = 0, sent = 1, delivered = 2, failed = 2, expired = 2, rejected = 2, blocked = 2}

local function apply(m, status, ms, err)
  local h = m['history']
  if type(h) ~= 'table' then h = {} end
  local last = h[#h]
  if last and last[1] == status then return end  -- the same report twice
  h[#h + 1] = {status, ms}
  m['history'] = h
  if (RANK[status] or 1) >= (RANK[m['status']] or 0) then
    m['status'] = status
    if err ~= '' then m['error'] = err end
  end
end

if ARGV[9] and ARGV[9] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[8], ARGV[9])
  redis.call('XDEL', KEYS[3], ARGV[9])
end
local parked = false
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[12], ARGV[6] .. ' ' .. ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[7])
  parked = redis.call('GET', KEYS[4])
  if parked then redis.call('DEL', KEYS[4]) end
end
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local m = cjson.decode(raw)
if ARGV[4] ~= '' then m['provider_id'] = ARGV[4] end
if ARGV[10] and ARGV[10] ~= '' then m['gateway'] = ARGV[10] end
local REPORTED = {sent = true, delivered = true, failed = true, expired = true, rejected = true}
local function report(before, ms)
  local st = m['status']
  if st ~= before and REPORTED[st] and m['flow'] and m['flow'] ~= cjson.null then
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[11], '*', 'e', cjson.encode({
      t = 'message', c = ARGV[6], f = m['flow'], m = ARGV[1], status = st, error = m['error'],
      governance = m['governance'], at = ms}))
  end
end
local before = m['status']
apply(m, ARGV[2], tonumber(ARGV[3]), ARGV[5])
report(before, tonumber(ARGV[3]))
if parked then
  local st, err, ms = string.match(parked, '^([^|]*)|(.*)|(%d+)$')
  if st then
    before = m['status']
    apply(m, st, tonumber(ms), err)
    report(before, tonumber(ms))
  end
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(m))
return 1
