-- Accept one inbound text durably and at most once per (contact, gateway, provider id).
--
-- Called only through IntakeArgs (intake.py) beside this file, which builds the KEYS and ARGV below.
--
-- Every key is in the contact's shard S's slot (T = its hash tag, engine/core/keys.py).
--
-- KEYS[1]   p:dd:T:K:B        the dedupe map's current bucket for the text's slot K
--                             (engine/core/idmaps.py): field ARGV[3] -> "<payload digest> <entry id>"
-- KEYS[2]   p:in:T            the contact's inbound shard stream
-- KEYS[3..] p:dd:T:K:B        the older buckets within the dedupe window, newest first
-- ARGV[1]  digest of the payload (so the same id with a different text is told apart)
-- ARGV[2]  TTL of KEYS[1] (s): the dedupe window after its bucket ends
-- ARGV[3]  the text's field: "GW:ID:h" (h: a hash of the sender; or a digest when long)
-- ARGV[4…] stream entry field/value pairs
--
-- Returns {"ok", id} when appended, {"dup", id} when this exact text was accepted before,
-- {"conflict", id} when the id was accepted before with a different payload.
local seen = redis.call('HGET', KEYS[1], ARGV[3])
for i = 3, #KEYS do
  if seen then break end
  seen = redis.call('HGET', KEYS[i], ARGV[3])
end
if seen then
  local sep = string.find(seen, ' ', 1, true)
  local id = string.sub(seen, sep + 1)
  if string.sub(seen, 1, sep - 1) == ARGV[1] then
    return {'dup', id}
  end
  return {'conflict', id}
end
local fields = {}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('HSET', KEYS[1], ARGV[3], ARGV[1] .. ' ' .. id)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {'ok', id}
