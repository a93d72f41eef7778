-- Accept one inbound text durably and at most once per (gateway, provider id).
--
-- KEYS[1]  p:dd:{N}:GW:ID   dedupe marker: "<payload digest> <entry id>", expires after the window
-- KEYS[2]  p:in:S           the contact's inbound shard stream
-- ARGV[1]  digest of the payload (so the same id with a different text is told apart)
-- ARGV[2]  dedupe window in seconds
-- ARGV[3…] stream entry field/value pairs
--
-- Returns {"ok", id} when appended, {"dup", id} when this exact text was accepted before,
-- {"conflict", id} when the id was accepted before with a different payload.
local seen = redis.call('GET', KEYS[1])
if seen then
  local sep = string.find(seen, ' ', 1, true)
  local id = string.sub(seen, sep + 1)
  if string.sub(seen, 1, sep - 1) == ARGV[1] then
    return {'dup', id}
  end
  return {'conflict', id}
end
local fields = {}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. id, 'EX', ARGV[2])
return {'ok', id}
