-- Library, not a script: pasted by the Store in place of the line "--#include contact_index" of
-- the scripts that write contacts (contact.lua, commit.lua, erase.lua, reindex.lua), so each keeps
-- its shard's listing index p:ix:T (engine/core/keys.py, engine/crm/listing.py) in step with the
-- contact in the same atomic call. The index is one sorted set per shard, all scores 0, members
-- compared as bytes:
--   c|CA|N          every contact, by created-at (CA: ms, 13 digits, zero-padded)
--   u|UA|N          every contact, by updated-at
--   t|TAG|CA|N      one per tag of the contact
--   g|STATUS|CA|N   the contact's consent status when it has one (opted_in, opted_out): most
--                   contacts have none ("unknown"), and a listing of those is read from c|
-- Only contacts (p:c:TN) are indexed; a consent record without a contact is not.

-- The index members of a contact with these created-at, updated-at (ms), tags (json) and
-- consent status (false: none): {member = true}.
local function ix_build(ca_ms, ua_ms, tags_json, status, number)
  local ca = string.format('%013d', tonumber(ca_ms))
  local out = {['c|' .. ca .. '|' .. number] = true,
               ['u|' .. string.format('%013d', tonumber(ua_ms)) .. '|' .. number] = true}
  if tags_json and tags_json ~= '' and tags_json ~= '[]' then
    for _, tag in ipairs(cjson.decode(tags_json)) do out['t|' .. tag .. '|' .. ca .. '|' .. number] = true end
  end
  if status and status ~= 'unknown' then out['g|' .. status .. '|' .. ca .. '|' .. number] = true end
  return out
end

-- The index members of contact N now: {member = true}, empty when there is no contact; and
-- its consent status (false: none).
local function ix_members(contact_key, consent_key, number)
  local status = redis.call('HGET', consent_key, 'cs')
  local h = redis.call('HMGET', contact_key, 'ca', 'ua', 'tg')
  if not h[1] then return {}, status end
  return ix_build(h[1], h[2] or h[1], h[3], status, number), status
end

-- Move the index from the members ``before`` to ``after`` (what changed only).
local function ix_update(index_key, before, after)
  local gone, added = {}, {}
  for m in pairs(before) do if not after[m] then gone[#gone + 1] = m end end
  for m in pairs(after) do
    if not before[m] then added[#added + 1] = 0; added[#added + 1] = m end
  end
  if #gone > 0 then redis.call('ZREM', index_key, unpack(gone)) end
  if #added > 0 then redis.call('ZADD', index_key, unpack(added)) end
end
