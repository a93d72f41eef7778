-- Map a send's provider id to its message, in the connector's {GW:K} slot (K: the id's slot,
-- engine/core/idmaps.py), and find a receipt that came before it.
--
-- Called only through ProviderIdArgs (provider_id.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]  p:pid:{GW:K}:B   the provider-id map's current bucket for slot K: field ARGV[1] -> ARGV[2]
-- KEYS[2]  p:dlrp:{GW:K}:F  a receipt that arrived before we knew the provider id
-- ARGV[1]  F, the provider id as a field   ARGV[2] "N message-id"
-- ARGV[3]  TTL of KEYS[1] (s): the receipt window after B ends
--
-- Runs BEFORE status.lua records the send on the message (another slot): a receipt arriving
-- after this call finds the map (receipt.lua and smpp_receipt.lua look there before they park,
-- atomically in this slot), one arriving before it was parked and is returned here. The parked
-- receipt is left in place: the caller applies it with status.lua, then deletes it, so a crash
-- in between loses nothing (see gateways/receipts.py).
-- Returns the parked receipt ("status|error|ms"), or "".
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('GET', KEYS[2]) or ''
