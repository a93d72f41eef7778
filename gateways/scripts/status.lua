-- Record a status change of one message (queued -> sent -> delivered / failed / expired ...), in
-- the contact's shard slot: every key below carries the shard's tag T.
--
-- Called only through StatusArgs (status.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]  p:mh:TN            message records hash
-- KEYS[2]  p:fx:T             the shard's flow outcome events: a flow's message that moved to
--                             sent or a final status is reported there
--                             (engine/conversation/outcomes.py), trimmed to ARGV[10];
--                             governance = true when it is a STOP/START/HELP answer; smpp = the
--                             record's, when an ESME submitted it (gateways/smpp/server_receipts.py)
-- KEYS[3]  p:out:T:GW[:bulk]  the outbound lane the message came from (only with ARGV[8])
-- ARGV[1]  message id   ARGV[2] new status   ARGV[3] now (ms)
-- ARGV[4]  provider message id or ""        ARGV[5] error text or ""
-- ARGV[6]  contact number (E.164)           ARGV[7] consumer group
-- ARGV[8]  stream entry id to XACK + XDEL, or ""
-- ARGV[9]  the gateway that sent it, or "" (recorded when the message was failed over)
-- ARGV[10] the outcome stream's length to keep (approximately)
-- ARGV[11] a receipt that came before the send was recorded ("status|error|ms", found by
--          provider_id.lua under the provider id), applied after the new status; or ""
--
-- The provider-id map lives in another slot ({GW:K}), so it is written by its own call
-- (provider_id.lua) BEFORE this one: gateways/receipts.py has the order and the race.
-- A status never moves back: a late "sent" after "delivered" is kept in the history only.
-- Returns 1, or 0 when the record is gone (trimmed from the log or erased).
local RANK = {queued = 0, sent = 1, delivered = 2, failed = 2, expired = 2, rejected = 2, blocked = 2,
  cancelled = 2}

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

if ARGV[8] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[7], ARGV[8])
  redis.call('XDEL', KEYS[3], ARGV[8])
end
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local m = cjson.decode(raw)
if ARGV[4] ~= '' then m['provider_id'] = ARGV[4] end
if ARGV[9] ~= '' then m['gateway'] = ARGV[9] end
local REPORTED = {sent = true, delivered = true, failed = true, expired = true, rejected = true,
  cancelled = true}
local function report(before, ms)
  local st = m['status']
  -- a flow's message, or a single message sent through the API (api = true)
  if st ~= before and REPORTED[st] and ((m['flow'] and m['flow'] ~= cjson.null) or m['api']) then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[10], '*', 'e', cjson.encode({
      t = 'message', c = ARGV[6], f = m['flow'], m = ARGV[1], status = st, error = m['error'],
      governance = m['governance'], smpp = m['smpp'], at = ms}))
  end
end
local before = m['status']
apply(m, ARGV[2], tonumber(ARGV[3]), ARGV[5])
report(before, tonumber(ARGV[3]))
if ARGV[11] ~= '' then
  local st, err, ms = string.match(ARGV[11], '^([^|]*)|(.*)|(%d+)$')
  if st then
    before = m['status']
    apply(m, st, tonumber(ms), err)
    report(before, tonumber(ms))
  end
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(m))
return 1
