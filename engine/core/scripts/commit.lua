-- Commit one turn for one contact, atomically: compare-and-swap the session version, record
-- which inbound event was applied, log the messages, enqueue the replies, move the timers.
--
-- Every key is in the contact's shard S's slot (T = its hash tag, engine/core/keys.py), so the
-- script runs on one Redis Cluster node.
--
-- KEYS[1]  p:s:TN     session string "v|li|d": version, last applied event "S/ms-seq", state
--                      json (engine/conversation/sessions.py)
-- KEYS[2]  p:ml:TN    message log index (zset id -> sequence number, so order is exact)
-- KEYS[3]  p:mh:TN    message records (hash id -> json)
-- KEYS[4]  p:out:T:GW[:bulk]  shard S's lane of the first connector of the route (reply or bulk)
-- KEYS[5]  p:tm:T     timers of the contact's shard (zset "N|kind|token" -> due ms)
-- KEYS[6]  p:c:TN     contact hash (only written when ARGV[11] is not "")
-- KEYS[7]  p:calls:T  the shard's CRM webhook jobs (only written when ARGV[15] is not "")
-- KEYS[8]  p:g:TN     consent and suppression: cs status, src source, at ms, sup reason;
--                      mk marketing consent, mksrc, mkat
-- KEYS[9]  p:cl:TN    consent ledger (stream): every change with its source and cause
-- KEYS[10] p:sent:TN  counted sends (zset message id -> ms), for the frequency caps
-- KEYS[11] p:fx:T     the shard's flow outcome events (stream, engine/conversation/outcomes.py),
--                      trimmed to ARGV[22]
-- KEYS[12] p:in:T     the shard's inbound stream, where the event applied was read from
-- KEYS[13] p:ix:T     the shard's listing index (contact_index.lua): follows a contact or consent change
-- KEYS[14] p:ho:TN    the contact's place in the inbox (engine/conversation/inbox.py)
-- KEYS[15] p:ib:T     the shard's inbox index (number -> handed off at ms)
-- KEYS[16] p:hv:T:U   optional: the hand-over key of the cancellable unit the outbound messages
--                      belong to (a single message, a journey start's delivery); each lane entry
--                      names it (field u) so the sender checks it atomically before sending
-- ARGV[1]  expected session version (0 = none yet)
-- ARGV[2]  event being applied, "S/ms-seq" (shard / stream entry id)
-- ARGV[3]  new state json, or "" to leave d as it is
-- ARGV[4]  session TTL in seconds
-- ARGV[5]  message log size to keep
-- ARGV[6]  contact number (E.164)
-- ARGV[7]  R message records   ARGV[8] O outbound messages
-- ARGV[9]  T timers to remove  ARGV[10] A timers to add
-- ARGV[11] contact change: "" none, else the contact's updated-at (ms) as loaded ("0": absent)
-- ARGV[12] new fields json     ARGV[13] new tags json     ARGV[14] the contact's new updated-at
-- ARGV[15] a CRM call job (json) or ""
-- ARGV[16] message log retention (s): the log of a contact who stays silent this long expires
-- ARGV[17] consent change "status|source|cause" or "" (applied before the gate)
-- ARGV[18] frequency caps "limit:window ms:label;..." or "" (none)
-- ARGV[19] now (ms): the gate's and the ledger's time; the messages' queued time
-- ARGV[20] the rest of the route: connectors to fail over to, "a,b" or ""
-- ARGV[21] E outcome events   ARGV[22] the outcome stream's length to keep (approximately)
-- ARGV[23] the consumer group that read the event from KEYS[12], or "": the event's entry is
--          acknowledged and deleted with the commit (and with a "dup"), if that group holds it
--          pending, so a worker needs no round trip of its own to acknowledge what it applied
-- ARGV[24] the send options of every outbound message (engine/core/sendopts.py: validity,
--          priority, receipts), written in each lane entry as field o; "" for none
-- then R pairs (message id, record json), O triples (message id, text, kind),
--      T timer members, A pairs (timer member, due ms), E outcome events (json),
--      then the inbox change (may be left out): "" none; "open", reason, flow it came from (the
--      contact is handed off to a person); "text" (a text from a handed-off contact); "reply",
--      operator (a person's reply, noted unless the gate blocked it); "close" (the contact
--      leaves the inbox)
--
-- The gate: every outbound message passes it here, whatever caused it. Kinds: "s" (the opt-out
-- confirmation, an opt-in confirmation, a HELP answer) is blocked only when the number is
-- suppressed; "r" (a reply to the customer's own text) also when opted out; "c" (a message the
-- business starts: journey start, reminder) also when any frequency cap's rolling window is
-- full, and it counts towards the caps when sent. "n" and "m" are "r" and "c" for a marketing
-- message: also blocked unless the contact's marketing consent (mk) is opted_in. A blocked
-- message keeps its record, with status "blocked" and the reason, and is not queued.
-- A consent change whose status starts "marketing_" changes the marketing consent alone; an
-- "opted_out" sets the marketing consent opted_out too (STOP stops every purpose).
--
-- Returns {"ok", v, "<blocked id> <opted_out|suppressed|no_marketing_consent|capped>"...} | {"dup", v} (event already applied: nothing written but the acknowledgement) |
-- {"conflict", v}.
-- A conflict means another writer committed since our load: the caller reloads and decides again.
--#include contact_index
local function parse(ref)
  local s, ms, seq = string.match(ref, '^(%d+)/(%d+)-(%d+)$')
  return tonumber(s), tonumber(ms), tonumber(seq)
end
local function ack()
  if ARGV[23] ~= '' then
    local entry = string.match(ARGV[2], '^%d+/(.*)$')
    if redis.call('XACK', KEYS[12], ARGV[23], entry) == 1 then
      redis.call('XDEL', KEYS[12], entry)
    end
  end
end

local stored = redis.call('GET', KEYS[1])
local v, li, d = 0, '', ''
if stored then
  local sv, sli, rest = string.match(stored, '^(%d+)|([^|]*)|(.*)$')
  v, li, d = tonumber(sv), sli, rest
end
if li ~= '' then
  local s1, ms1, q1 = parse(ARGV[2])
  local s0, ms0, q0 = parse(li)
  -- Entries of one shard stream are ordered; an id at or below the last applied one is a
  -- redelivery (a worker died between commit and XACK).
  if s1 == s0 and (ms1 < ms0 or (ms1 == ms0 and q1 <= q0)) then
    ack()
    return {'dup', v}
  end
end
if v ~= tonumber(ARGV[1]) then
  return {'conflict', v}
end
if ARGV[11] ~= '' and (redis.call('HGET', KEYS[6], 'ua') or '0') ~= ARGV[11] then
  return {'conflict', v}  -- the contact changed (e.g. a CRM PUT) since the turn loaded it
end

v = v + 1
if ARGV[3] ~= '' then d = ARGV[3] end
redis.call('SET', KEYS[1], v .. '|' .. ARGV[2] .. '|' .. d, 'EX', ARGV[4])

local indexed = (ARGV[11] ~= '' or ARGV[17] ~= '') and ix_members(KEYS[6], KEYS[8], ARGV[6])
if ARGV[11] ~= '' then
  redis.call('HSETNX', KEYS[6], 'ca', ARGV[14])
  redis.call('HSET', KEYS[6], 'f', ARGV[12], 'tg', ARGV[13], 'ua', ARGV[14])
end

if ARGV[15] ~= '' then
  redis.call('XADD', KEYS[7], '*', 'c', ARGV[6], 'j', ARGV[15])
end

if ARGV[17] ~= '' then
  local status, source, cause = string.match(ARGV[17], '^([^|]*)|([^|]*)|(.*)$')
  local mk = string.match(status, '^marketing_(.*)$')
  if mk then  -- marketing alone ("STOP PROMO", a flow's marketing opt-in): service unchanged
    redis.call('HSET', KEYS[8], 'mk', mk, 'mksrc', source, 'mkat', ARGV[19])
    redis.call('XADD', KEYS[9], '*', 'cs', mk, 'purpose', 'marketing', 'src', source, 'cause', cause,
      'at', ARGV[19], 'event', ARGV[2])
  else
    redis.call('HSET', KEYS[8], 'cs', status, 'src', source, 'at', ARGV[19])
    -- STOP stops every purpose: a marketing opt-in must be given again, after it.
    if status == 'opted_out' then
      redis.call('HSET', KEYS[8], 'mk', 'opted_out', 'mksrc', source, 'mkat', ARGV[19])
    end
    redis.call('XADD', KEYS[9], '*', 'cs', status, 'src', source, 'cause', cause, 'at', ARGV[19],
      'event', ARGV[2])
  end
end
if indexed then ix_update(KEYS[13], indexed, ix_members(KEYS[6], KEYS[8], ARGV[6])) end
local gate = redis.call('HMGET', KEYS[8], 'cs', 'sup', 'mk')
local opted_out, suppressed = gate[1] == 'opted_out', gate[2] and gate[2] ~= ''
local marketing_ok = gate[3] == 'opted_in'
local caps, longest = {}, 0
for limit, window, label in string.gmatch(ARGV[18], '(%d+):(%d+):([^;]*)') do
  caps[#caps + 1] = {tonumber(limit), tonumber(window), label}
  if tonumber(window) > longest then longest = tonumber(window) end
end
local now = tonumber(ARGV[19])

local nrec, nout = tonumber(ARGV[7]), tonumber(ARGV[8])
local nrem, nadd = tonumber(ARGV[9]), tonumber(ARGV[10])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local seq = tonumber(last[2] or '0')
local function outcome(json)
  redis.call('XADD', KEYS[11], 'MAXLEN', '~', ARGV[22], '*', 'e', json)
end
local i = 25
for _ = 1, nrec do
  seq = seq + 1
  redis.call('ZADD', KEYS[2], seq, ARGV[i])
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local blocked = {}
for _ = 1, nout do
  local id, kind = ARGV[i], ARGV[i + 2]
  local reason, code = nil, nil
  if suppressed then
    reason, code = 'suppressed: ' .. gate[2], 'suppressed'
  elseif opted_out and kind ~= 's' then
    reason, code = 'opted out', 'opted_out'
  elseif (kind == 'm' or kind == 'n') and not marketing_ok then
    reason, code = 'no marketing consent', 'no_marketing_consent'
  elseif kind == 'c' or kind == 'm' then
    for _, cap in ipairs(caps) do
      if redis.call('ZCOUNT', KEYS[10], '(' .. (now - cap[2]), '+inf') >= cap[1] then
        reason, code = 'capped: ' .. cap[3], 'capped'
        break
      end
    end
    if not reason and #caps > 0 then redis.call('ZADD', KEYS[10], now, id) end
  end
  if reason then
    local rec = cjson.decode(redis.call('HGET', KEYS[3], id))
    rec['status'] = 'blocked'
    rec['error'] = reason
    rec['history'] = {{'blocked', now}}
    redis.call('HSET', KEYS[3], id, cjson.encode(rec))
    blocked[#blocked + 1] = id .. ' ' .. code
    if (rec['flow'] and rec['flow'] ~= cjson.null) or rec['api'] then
      outcome(cjson.encode({t = 'message', c = ARGV[6], f = rec['flow'], m = id, status = 'blocked',
        error = code, governance = rec['governance'], smpp = rec['smpp'], at = now}))
    end
  else
    local entry = {'m', id, 'c', ARGV[6], 't', ARGV[i + 1], 'r', ARGV[20], 'q', ARGV[19]}
    if KEYS[16] then
      entry[#entry + 1] = 'u'
      entry[#entry + 1] = KEYS[16]
    end
    if ARGV[24] ~= '' then
      entry[#entry + 1] = 'o'
      entry[#entry + 1] = ARGV[24]
    end
    redis.call('XADD', KEYS[4], '*', unpack(entry))
  end
  i = i + 3
end
for _ = 1, nrem do
  redis.call('ZREM', KEYS[5], ARGV[i])
  i = i + 1
end
for _ = 1, nadd do
  redis.call('ZADD', KEYS[5], ARGV[i + 1], ARGV[i])
  i = i + 2
end
for _ = 1, tonumber(ARGV[21]) do
  outcome(ARGV[i])
  i = i + 1
end
local inbox = ARGV[i]
if inbox == 'open' then
  redis.call('DEL', KEYS[14])
  redis.call('HSET', KEYS[14], 'st', 'open', 'at', ARGV[19], 'why', ARGV[i + 1], 'f', ARGV[i + 2], 'nt', 0)
  redis.call('ZADD', KEYS[15], ARGV[19], ARGV[6])
elseif inbox == 'text' then
  redis.call('HSET', KEYS[14], 'lt', ARGV[19])
  redis.call('HINCRBY', KEYS[14], 'nt', 1)
elseif inbox == 'reply' and #blocked == 0 then
  redis.call('HSET', KEYS[14], 'lr', ARGV[19], 'rb', ARGV[i + 1])
elseif inbox == 'close' then
  redis.call('DEL', KEYS[14])
  redis.call('ZREM', KEYS[15], ARGV[6])
end

local keep = tonumber(ARGV[5])
local n = redis.call('ZCARD', KEYS[2])
if n > keep then
  local old = redis.call('ZRANGE', KEYS[2], 0, n - keep - 1)
  redis.call('HDEL', KEYS[3], unpack(old))
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - keep - 1)
end
if nrec > 0 then
  redis.call('EXPIRE', KEYS[2], ARGV[16])
  redis.call('EXPIRE', KEYS[3], ARGV[16])
end
if longest > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[10], '-inf', now - longest)
  redis.call('PEXPIRE', KEYS[10], longest)
end
ack()
local out = {'ok', v}
for _, id in ipairs(blocked) do out[#out + 1] = id end
return out
