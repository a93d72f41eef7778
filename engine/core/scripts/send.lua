-- Accept one single message (POST /v1/messages, engine/crm/sends.py), atomically: its
-- idempotency key, its owner record, its hand-over key, and its event, now on the shard's
-- stream or, for a later send_at, as a "d" timer carrying the event. Every key is in the
-- recipient's shard slot T.
--
-- KEYS[1]  p:msg:T:ID  the message's owner record (json: contact, first status, times)
-- KEYS[2]  p:in:T      the shard's inbound stream (the event, when due now)
-- KEYS[3]  p:tm:T      the shard's timers (the event as a "d" timer, when due later)
-- KEYS[4]  p:hv:T:ID   the message's hand-over key (written only with ARGV[6])
-- KEYS[5]  p:ik:T:K    optional: the idempotency key given with the send
-- ARGV[1]  message id            ARGV[2] owner record json      ARGV[3] its TTL (s)
-- ARGV[4]  due ms, or "" to queue now                           ARGV[5] the timer member (due later)
-- ARGV[6]  hand-over "p|<expires ms>" (a validity), or ""       ARGV[7] its TTL (s)
-- ARGV[8]  the idempotency key's TTL (s)
-- ARGV[9..] the event's stream fields (name, value pairs), when queued now
--
-- Returns {"ok", entry id or "" (scheduled)} | {"repeat", the first message's id} (nothing written).
if KEYS[5] then
  local first = redis.call('GET', KEYS[5])
  if first then
    return {'repeat', first}
  end
  redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[8])
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[4], ARGV[6], 'EX', ARGV[7])
end
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
  return {'ok', ''}
end
local fields = {}
for i = 9, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
return {'ok', redis.call('XADD', KEYS[2], '*', unpack(fields))}
