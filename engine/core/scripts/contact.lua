-- Write one contact whole (a CRM PUT, one row of an import): fields, tags, language and
-- timezone replace what was there; created-at is set only the first time. The shard's listing
-- index follows in the same call (contact_index.lua).
--
-- Called only through ContactArgs (contact.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]  p:c:TN    contact hash (T: the contact's shard's hash tag): f fields, tg tags, l language, tz timezone, ca/ua ms
-- KEYS[2]  p:g:TN    consent (read: cs, for the index)
-- KEYS[3]  p:ix:T    the shard's listing index
-- ARGV[1]  now (ms)            ARGV[2] fields json     ARGV[3] tags json
-- ARGV[4]  language or ""      ARGV[5] timezone or ""  ("" removes it)
-- ARGV[6]  the contact's number
--
-- Returns {created (1 or 0), created-at ms}.
--#include contact_index
local before, status = ix_members(KEYS[1], KEYS[2], ARGV[6])
local created = redis.call('HSETNX', KEYS[1], 'ca', ARGV[1])
redis.call('HSET', KEYS[1], 'f', ARGV[2], 'tg', ARGV[3], 'ua', ARGV[1])
for i, name in ipairs({'l', 'tz'}) do
  local value = ARGV[3 + i]
  if value == '' then redis.call('HDEL', KEYS[1], name) else redis.call('HSET', KEYS[1], name, value) end
end
local ca = redis.call('HGET', KEYS[1], 'ca')
ix_update(KEYS[3], before, ix_build(ca, ARGV[1], ARGV[3], status, ARGV[6]))
return {created, tonumber(ca)}
