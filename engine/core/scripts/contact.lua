-- Write one contact whole (a CRM PUT, one row of an import): fields, tags, language and
-- timezone replace what was there; created-at is set only the first time.
--
-- Called only through ContactArgs (contact.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]  p:c:TN    contact hash (T: the contact's shard's hash tag): f fields, tg tags, l language, tz timezone, ca/ua ms
-- ARGV[1]  now (ms)            ARGV[2] fields json     ARGV[3] tags json
-- ARGV[4]  language or ""      ARGV[5] timezone or ""  ("" removes it)
--
-- Returns {created (1 or 0), created-at ms}.
local created = redis.call('HSETNX', KEYS[1], 'ca', ARGV[1])
redis.call('HSET', KEYS[1], 'f', ARGV[2], 'tg', ARGV[3], 'ua', ARGV[1])
for i, name in ipairs({'l', 'tz'}) do
  local value = ARGV[3 + i]
  if value == '' then redis.call('HDEL', KEYS[1], name) else redis.call('HSET', KEYS[1], name, value) end
end
return {created, tonumber(redis.call('HGET', KEYS[1], 'ca'))}
