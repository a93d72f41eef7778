-- Find what an SMPP delivery receipt is about, by the literal id it names, or park it under
-- that id until the send is recorded; in the connector's {GW:K} slot (K: the id's slot).
--
-- Called only through SmppReceiptArgs (smpp_receipt.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]        p:dlrp:{GW:K}:F   where the receipt is parked ("status|error|ms")
-- KEYS[2..1+n]   p:seg:{GW:K}:B    segments of multipart messages, buckets over the receipt
--                                  window newest first: F -> "first id|parts|part"
-- KEYS[2+n..]    p:pid:{GW:K}:B    provider ids, the same buckets: F -> "N message-id"
-- ARGV[1] F, the id as a field   ARGV[2] n   ARGV[3] our status   ARGV[4] error text
-- ARGV[5] now (ms)   ARGV[6] park TTL (s)
--
-- F is the receipt's id as it stands (or as the connector's receipt_id_format converts it):
-- never another form of it, which could be another message's id (hex "10" is decimal 16, and
-- "a" in hex is ten). Returns {"part", "first id|parts|part"}, {"single", "N message-id"} (the
-- message to record it on, with status.lua in the contact's shard slot), or {"parked"}:
-- provider_id.lua (single part) or smpp_parts.lua (multipart) finds it under the id the
-- submit_sm_resp gave. Atomic with both (one slot), so a receipt is either found here or picked
-- up there.
local n = tonumber(ARGV[2])
for i = 2, 1 + n do
  local seg = redis.call('HGET', KEYS[i], ARGV[1])
  if seg then return {'part', seg} end
end
for i = 2 + n, #KEYS do
  local owner = redis.call('HGET', KEYS[i], ARGV[1])
  if owner then return {'single', owner} end
end
redis.call('SET', KEYS[1], ARGV[3] .. '|' .. ARGV[4] .. '|' .. ARGV[5], 'EX', ARGV[6])
return {'parked'}
