-- An SMPP server account's binds, global across every process: take, renew or drop a bind's
-- lease, on Redis's clock. A lease that is not renewed runs out (its process died), and the
-- bind stops counting then.
--
-- Called only through SmppsBindsArgs (smpps_binds.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]  p:smbinds:{sm:A}  zset: bind id -> lease expiry ms
-- ARGV[1]  take | renew | drop     ARGV[2] the bind's id
-- ARGV[3]  the account's max binds  ARGV[4] lease ms
-- Returns 1 (taken, renewed, dropped) or 0 (take: the account is at its max binds; renew: the
-- lease ran out and another bind may hold the place, so the caller closes the bind).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode, id = ARGV[1], ARGV[2]
if mode == 'drop' then
  redis.call('ZREM', KEYS[1], id)
  return 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local lease = tonumber(ARGV[4])
local held = redis.call('ZSCORE', KEYS[1], id)
if mode == 'renew' and not held then
  return 0
end
if mode == 'take' and not held and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, id)
redis.call('PEXPIRE', KEYS[1], lease * 2)
return 1
