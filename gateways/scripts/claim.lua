-- Take a cancellable message for sending (before its rate slot, then the gateway call): the check
-- that makes a cancel win every race with the sender (engine/crm/sends.py holds the other side,
-- engine/core/scripts/cancel.lua). One key, in the message's shard slot T.
--
-- Called only through ClaimArgs (claim.py) beside this file.
--
-- KEYS[1]  p:hv:T:U   hand-over of the message's unit: absent or "p|<expires ms>" pending,
--                      "h" handed to a gateway, "x" cancelled, "e" expired
-- ARGV[1]  now (ms)
-- ARGV[2]  how long "h" is kept (s): long enough for a cancel to be told "already handed"
--
-- Returns "ok" (handed now, or by an earlier attempt of this message or of its unit's other
-- messages: send it), "cancelled" or "expired" (do not send; record that status).
local v = redis.call('GET', KEYS[1])
if v == 'h' then
  return 'ok'
end
if v == 'x' then
  return 'cancelled'
end
if v == 'e' then
  return 'expired'
end
if v then
  local expires = tonumber(string.match(v, '^p|(%d+)$') or '')
  if expires and expires <= tonumber(ARGV[1]) then
    redis.call('SET', KEYS[1], 'e', 'KEEPTTL')
    return 'expired'
  end
end
redis.call('SET', KEYS[1], 'h', 'EX', ARGV[2])
return 'ok'
