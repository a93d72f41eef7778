-- Find the message a delivery receipt is about, or park the receipt until we know.
--
-- KEYS[1]  p:pid:GW:ID    provider id -> "N message-id" (written when the send was recorded)
-- KEYS[2]  p:dlrp:GW:ID   the parked receipt "status|error|ms"
-- ARGV[1]  our status     ARGV[2] error text     ARGV[3] now (ms)    ARGV[4] park TTL (s)
--
-- A provider may report delivery before its answer to our send reached us (or before we wrote
-- it down). Then the receipt is parked; status.lua applies it when it records the provider id.
-- Both run atomically, so a receipt is either found here or picked up there, never lost.
-- Returns "N message-id", or "" when parked.
local found = redis.call('GET', KEYS[1])
if found then
  return found
end
redis.call('SET', KEYS[2], ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3], 'EX', ARGV[4])
return ''
