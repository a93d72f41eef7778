-- Find the message a delivery receipt is about, or park the receipt until we know, in the
-- connector's {GW:K} slot (K: the provider id's slot, engine/core/idmaps.py).
--
-- Called only through ReceiptArgs (receipt.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]      p:dlrp:{GW:K}:F  where the receipt is parked ("status|error|ms")
-- KEYS[2..]    p:pid:{GW:K}:B   the provider-id map's buckets over the receipt window, newest
--                               first (engine/core/idmaps.py): field F -> "N message-id"
-- ARGV[1]  F, the provider id as a field    ARGV[2] our status    ARGV[3] error text
-- ARGV[4]  now (ms)    ARGV[5] park TTL (s)
--
-- A provider may report delivery before its answer to our send reached us (or before we wrote
-- it down). Then the receipt is parked; provider_id.lua finds it when it maps the provider id,
-- and the sender applies it to the message. Both run atomically in this slot, so a receipt is
-- either found here or picked up there, never lost. The caller records a found receipt on the
-- message with status.lua (the contact's shard slot).
-- Returns "N message-id", or "" when parked.
for i = 2, #KEYS do
  local found = redis.call('HGET', KEYS[i], ARGV[1])
  if found then return found end
end
redis.call('SET', KEYS[1], ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4], 'EX', ARGV[5])
return ''
