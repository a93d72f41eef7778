-- A connector's rate, shared by every process sending through it: reserve the next slot.
--
-- GCRA on Redis's clock: KEYS[1] holds the theoretical arrival time (microseconds) of the next
-- segment. A message of ARGV[2] segments reserves that many emission intervals (ARGV[1] us each)
-- and may go when its first one is due, so segments leave evenly spaced (no one-second bursts).
-- A reservation further ahead than ARGV[3] us is refused (the caller asks again later), so a
-- process never books the connector far into the future.
--
-- Called only through RateArgs (rate.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]  p:rate:GW       ARGV[1] interval us per segment   ARGV[2] segments   ARGV[3] max ahead us
-- Returns {1, wait_us} when reserved (send after wait_us), {0, wait_us} when refused.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > tonumber(ARGV[3]) then
  return {0, wait}
end
local after = tat + tonumber(ARGV[1]) * tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%d', after), 'PX', math.ceil((after - now) / 1000) + 1000)
return {1, wait}
