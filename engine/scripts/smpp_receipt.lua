-- Find what an SMPP delivery receipt is about, trying each form of the SMSC's id (SMSCs and
-- their receipts disagree on hex and decimal), or park it until the send is recorded.
--
-- KEYS[3i-2]  p:seg:GW:F    F is a segment of a multipart message -> "first id|parts|part"
-- KEYS[3i-1]  p:pid:GW:F    F is a message's provider id (written when the send was recorded)
-- KEYS[3i]    p:dlrp:GW:F   where the receipt is parked under form F
--   for each form F of the id, i = 1..#KEYS/3, the receipt's own form first
-- ARGV[1] our status   ARGV[2] error text   ARGV[3] now (ms)   ARGV[4] park TTL (s)
--
-- Returns {"part", "first id|parts|part"}, {"single", "N message-id"} (the provider-id key's
-- value: the message to record it on), or {"parked"}. Parked under every
-- form: status.lua (single part) or smpp_parts.lua (multipart) finds it under the form the
-- submit_sm_resp gave. Atomic with both, so a receipt is either found here or picked up there.
local n = #KEYS / 3
for i = 1, n do
  local seg = redis.call('GET', KEYS[3 * i - 2])
  if seg then return {'part', seg} end
end
for i = 1, n do
  local owner = redis.call('GET', KEYS[3 * i - 1])
  if owner then return {'single', owner} end
end
for i = 1, n do
  redis.call('SET', KEYS[3 * i], ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3], 'EX', ARGV[4])
end
return {'parked'}
