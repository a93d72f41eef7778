-- Erase one contact (right to be forgotten), atomically: profile, session, message log and
-- records, counted sends and the given timers go; the consent ledger moves to a key named by a
-- keyed hash of the number (engine/crm/erasure.py), ending with an "erased" entry. Consent status
-- (p:g:TN) is kept only when it silences the number (opted out or suppressed): the gate reads
-- it, so an erased customer who opted out is still not texted if the CRM brings the number back.
--
-- Called only through EraseArgs (erase.py) beside this file, which builds the KEYS and ARGV below.
--
-- Every key is in the contact's shard S's slot (T = its hash tag, engine/core/keys.py).
--
-- KEYS[1]  p:c:TN      contact          KEYS[2] p:s:TN    session
-- KEYS[3]  p:ml:TN     message index    KEYS[4] p:mh:TN   message records (bodies)
-- KEYS[5]  p:sent:TN   counted sends    KEYS[6] p:g:TN    consent status (cs, src, at, sup)
-- KEYS[7]  p:cl:TN     consent ledger   KEYS[8] p:cl:h:TD the hashed ledger it moves to
-- KEYS[9]  p:tm:T      timers of the contact's shard
-- KEYS[10] p:ix:T      the shard's listing index (the contact's members go)
-- ARGV[1]  now (ms)    ARGV[2] source of the erasure ("api", "cli")    ARGV[3] the number
-- then the contact's timer members (found with ZSCAN before the call).
--
-- Returns 1 when something was erased, 0 when nothing was held for the number (already erased
-- or never known; a kept opt-out does not count).
--#include contact_index
local gate = redis.call('HMGET', KEYS[6], 'cs', 'sup')
local silenced = gate[1] == 'opted_out' or (gate[2] and gate[2] ~= '')
local held = redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7])
if gate[1] and not silenced then held = held + 1 end
if held == 0 then return 0 end

for _, entry in ipairs(redis.call('XRANGE', KEYS[7], '-', '+')) do
  local fields, has_at = entry[2], false
  for i = 1, #fields, 2 do
    if fields[i] == 'at' then has_at = true end
  end
  if not has_at then
    fields[#fields + 1] = 'at'
    fields[#fields + 1] = string.match(entry[1], '^(%d+)')
  end
  redis.call('XADD', KEYS[8], '*', unpack(fields))
end
local kept = silenced and 'contact erased; opt-out kept' or 'contact erased'
redis.call('XADD', KEYS[8], '*', 'change', 'erased', 'src', ARGV[2], 'cause', kept, 'at', ARGV[1])

ix_update(KEYS[10], ix_members(KEYS[1], KEYS[6], ARGV[3]), {})
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7])
if not silenced then redis.call('DEL', KEYS[6]) end
if #ARGV > 3 then redis.call('ZREM', KEYS[9], unpack(ARGV, 4)) end
return 1
