-- Queue a receipt or an MO for an SMPP server account's binds, once: bounded by count and age.
--
-- Called only through SmppsPushArgs (smpps_push.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]  p:smq:{sm:A}        the account's queue (stream)
-- KEYS[2]  p:smseen:{sm:A}:D   this entry's once-only key (D: a digest of what it is)
-- ARGV[1]  the queue's length to keep (approximately: the oldest entries go first)
-- ARGV[2]  the oldest entry id to keep (ms: now - the age limit)
-- ARGV[3]  the once-only key's TTL (s)
-- ARGV[4..] the entry's field/value pairs
-- Returns {1, entry id} when queued, {0, the first entry id} when it was queued before.
local first = redis.call('GET', KEYS[2])
if first then
  return {0, first}
end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[2])
redis.call('SET', KEYS[2], id, 'EX', ARGV[3])
return {1, id}
