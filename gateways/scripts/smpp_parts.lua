-- Record the parts of a multipart message sent over SMPP, before its send is recorded, and take
-- in any receipt for a part that arrived before we knew its id.
--
-- Called only through SmppPartsArgs (smpp_parts.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]       p:roll:GW:FIRST   receipts per part (part -> "status|error")
-- KEYS[2i]      p:seg:{GW:K}:B    the segment map's current bucket for part i's slot K:
--                                 field ARGV[3+i] -> "FIRST|parts|i"
-- KEYS[2i+1]    p:dlrp:{GW:K}:F   a receipt parked under part i's id ("status|error|ms")
--   for i = 1..parts
-- ARGV[1] FIRST (the first part's id as a field: the message's provider id)
-- ARGV[2] TTL of the roll-up (s)   ARGV[3] TTL of the segment buckets (s)
-- ARGV[3+i] part i's id as a field (itself, or a digest when long: engine/core/idmaps.py)
--
-- A parked receipt for part 1 is moved here too, so status.lua does not take one part's
-- receipt for the whole message's. Returns the roll-up hash as a flat list.
local parts = (#KEYS - 1) / 2
for i = 1, parts do
  redis.call('HSET', KEYS[2 * i], ARGV[3 + i], ARGV[1] .. '|' .. parts .. '|' .. i)
  redis.call('EXPIRE', KEYS[2 * i], ARGV[3])
  local parked = redis.call('GET', KEYS[2 * i + 1])
  if parked then
    local st, err = string.match(parked, '^([^|]*)|(.*)|%d+$')
    if st then redis.call('HSET', KEYS[1], tostring(i), st .. '|' .. err) end
    redis.call('DEL', KEYS[2 * i + 1])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('HGETALL', KEYS[1])
