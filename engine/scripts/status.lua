-- Record a status change of one message (queued -> sent -> delivered / failed).
--
-- KEYS[1]  p:mh:{N}         message records hash
-- KEYS[2]  p:pid:GW:ID      provider id -> "N message-id" (only when ARGV[4] is not "")
-- KEYS[3]  p:out:GW         the outbound stream the message came from (only with ARGV[9])
-- ARGV[1]  message id   ARGV[2] new status   ARGV[3] now (ms)
-- ARGV[4]  provider message id or ""        ARGV[5] error text or ""
-- ARGV[6]  contact number (E.164)           ARGV[7] provider-id map TTL (s)
-- ARGV[8]  consumer group                   ARGV[9] stream entry id to XACK + XDEL, or ""
--
-- Returns 1, or 0 when the record is gone (trimmed from the log or erased).
if ARGV[9] and ARGV[9] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[8], ARGV[9])
  redis.call('XDEL', KEYS[3], ARGV[9])
end
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[2], ARGV[6] .. ' ' .. ARGV[1], 'EX', ARGV[7])
end
if not raw then
  return 0
end
local m = cjson.decode(raw)
m['status'] = ARGV[2]
if ARGV[4] ~= '' then m['provider_id'] = ARGV[4] end
if ARGV[5] ~= '' then m['error'] = ARGV[5] end
local h = m['history']
if type(h) ~= 'table' then h = {} end
h[#h + 1] = {ARGV[2], tonumber(ARGV[3])}
m['history'] = h
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(m))
return 1
