-- Find what an SMPP delivery receipt is about, by the literal id it names, or park it under
-- that id until the send is recorded.
--
-- KEYS[1]  p:seg:GW:ID    ID is a segment of a multipart message -> "first id|parts|part"
-- KEYS[2]  p:pid:GW:ID    ID is a message's provider id (written when the send was recorded)
-- KEYS[3]  p:dlrp:GW:ID   where the receipt is parked
-- ARGV[1] our status   ARGV[2] error text   ARGV[3] now (ms)   ARGV[4] park TTL (s)
--
-- ID is the receipt's id as it stands (or as the connector's receipt_id_format converts it):
-- never another form of it, which could be another message's id (hex "10" is decimal 16, and
-- "a" in hex is ten). Returns {"part", "first id|parts|part"}, {"single", "N message-id"} (the
-- provider-id key's value: the message to record it on), or {"parked"}: status.lua (single
-- part) or smpp_parts.lua (multipart) finds it under the id the submit_sm_resp gave. Atomic
-- with both, so a receipt is either found here or picked up there.
local seg = redis.call('GET', KEYS[1])
if seg then return {'part', seg} end
local owner = redis.call('GET', KEYS[2])
if owner then return {'single', owner} end
redis.call('SET', KEYS[3], ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3], 'EX', ARGV[4])
return {'parked'}
