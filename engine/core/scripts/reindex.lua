-- Put one contact's members in its shard's listing index (contact_index.lua) as its records
-- are now: after a consent change made outside a turn (the consent API), and by the backfill of
-- contacts written before the index existed (``parley contacts reindex``). A consent member of
-- another status goes; the contact's other members are added if missing (ZADD is idempotent).
--
-- Called only through ReindexArgs (reindex.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]  p:c:TN    contact hash     KEYS[2] p:g:TN   consent     KEYS[3] p:ix:T  the shard's index
-- ARGV[1]  the contact's number
--
-- Returns 1 when the contact exists (and is indexed), 0 when there is no contact.
--#include contact_index
local now = ix_members(KEYS[1], KEYS[2], ARGV[1])
if next(now) == nil then return 0 end
local ca = string.format('%013d', tonumber(redis.call('HGET', KEYS[1], 'ca')))
local gone = {}
for _, status in ipairs({'opted_in', 'opted_out', 'unknown'}) do
  local m = 'g|' .. status .. '|' .. ca .. '|' .. ARGV[1]
  if not now[m] then gone[#gone + 1] = m end
end
local added = {}
for m in pairs(now) do added[#added + 1] = 0; added[#added + 1] = m end
redis.call('ZREM', KEYS[3], unpack(gone))
redis.call('ZADD', KEYS[3], unpack(added))
return 1
