-- Record the parts of a multipart message sent over SMPP, before its send is recorded, and take
-- in any receipt for a part that arrived before we knew its id. One call per slot: the parts
-- whose ids fall in one slot K of the connector ({GW:K}, engine/core/idmaps.py) go together.
--
-- Called only through SmppPartsArgs (smpp_parts.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]       p:seg:{GW:K}:B        the segment map's current bucket for slot K:
--                                     field of part i -> "FIRST|parts|i"
-- KEYS[1+j]     p:dlrp:{GW:K}:Fj      a receipt parked under this call's j-th part (j = 1..m)
-- KEYS[m+2]     p:roll:{GW:K}:FIRST   the roll-up, receipts per part (part -> "status|error"):
--                                     only in the call for the FIRST part's slot (the last call)
-- ARGV[1] FIRST (the first part's id as a field: the message's provider id)
-- ARGV[2] the message's number of parts   ARGV[3] TTL of the segment bucket (s)
-- ARGV[4] TTL of the roll-up (s)          ARGV[5] m, this call's parts
-- ARGV[4+2j], ARGV[5+2j]  the j-th part's number i and its id as a field
-- ARGV[6+2m..]  (roll-up call only) pairs part number, "status|error": receipts the other
--               slots' calls found parked
--
-- Without the roll-up, receipts found parked are returned (part, "status|error", flat) and left
-- in place: the caller passes them to the roll-up call, then deletes them (a crash in between
-- loses none). With it, parked receipts of its own slot are moved into it (part 1's too, so
-- provider_id.lua does not take one part's receipt for the whole message's), and the roll-up
-- hash is returned as a flat list.
local m = tonumber(ARGV[5])
local rollup = KEYS[m + 2]
local found = {}
for j = 1, m do
  local part, f = ARGV[4 + 2 * j], ARGV[5 + 2 * j]
  redis.call('HSET', KEYS[1], f, ARGV[1] .. '|' .. ARGV[2] .. '|' .. part)
  local parked = redis.call('GET', KEYS[1 + j])
  if parked then
    local st, err = string.match(parked, '^([^|]*)|(.*)|%d+$')
    if st and rollup then
      redis.call('HSET', rollup, part, st .. '|' .. err)
    elseif st then
      found[#found + 1] = part
      found[#found + 1] = st .. '|' .. err
    end
    if rollup or not st then redis.call('DEL', KEYS[1 + j]) end
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if not rollup then return found end
for i = 6 + 2 * m, #ARGV, 2 do
  redis.call('HSET', rollup, ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', rollup, ARGV[4])
return redis.call('HGETALL', rollup)
