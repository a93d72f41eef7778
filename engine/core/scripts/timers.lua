-- Fire the due timers of one shard: each becomes an event on the shard's inbound stream, so it
-- is ordered with the contact's texts (a timer and a late reply resolve to one outcome: the
-- second to be processed finds the session moved on). Atomic, so a timer fires exactly once
-- however many workers poll.
--
-- Called only through TimersArgs (timers.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]  p:tm:T   shard S's timers (zset "N|kind|token" -> due ms)
-- KEYS[2]  p:in:T   the shard's inbound stream (T: shard S's hash tag: one slot)
-- ARGV[1]  now (ms)   ARGV[2] at most this many timers per call
--
-- Returns the number of timers fired.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do
  local contact, kind, token = string.match(m, '^([^|]+)|([^|]+)|(.*)$')
  redis.call('XADD', KEYS[2], '*', 'k', 'timer', 'c', contact, 'tk', kind, 'tt', token, 'ts', ARGV[1])
  redis.call('ZREM', KEYS[1], m)
end
return #due
