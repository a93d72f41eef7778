-- Claim a handed-off contact for one person: the first claim wins; the same person claiming
-- again changes nothing; anyone else is refused, naming who holds it.
--
-- Called only through InboxClaimArgs (inbox_claim.py) beside this file, which builds the KEYS and ARGV below.
--
-- Every key is in the contact's shard S's slot (T = its hash tag, engine/core/keys.py).
--
-- KEYS[1]  p:ho:TN    the contact's place in the inbox (st open|claimed, by, ca, ...)
-- KEYS[2]  p:fx:T     the shard's outcome events (the "claimed" event is appended)
-- ARGV[1]  operator   ARGV[2] now (ms)   ARGV[3] the outcome stream's length to keep (approximately)
-- ARGV[4]  the outcome event (json) to append when this claim takes the contact
--
-- Returns {"missing"} (not in the inbox) | {"taken", holder} | {"same", operator} | {"ok", operator}.
local st = redis.call('HGET', KEYS[1], 'st')
if not st then return {'missing'} end
local by = redis.call('HGET', KEYS[1], 'by')
if st == 'claimed' and by then
  if by == ARGV[1] then return {'same', by} end
  return {'taken', by}
end
redis.call('HSET', KEYS[1], 'st', 'claimed', 'by', ARGV[1], 'ca', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[4])
return {'ok', ARGV[1]}
