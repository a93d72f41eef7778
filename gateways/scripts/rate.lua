-- A connector's rate, shared by every process sending through it: reserve the next send slot.
--
-- The carrier counts what arrives in any one-second window, so that is what is bounded, exactly:
-- every reservation is logged (KEYS[1], a zset: score = segments booked so far, cumulative;
-- member = "slot_us:segments:virtual_us") and a new one is placed at the earliest time that
--   1. is now or later (a slot is when the send leaves: never in the past), and
--   2. keeps the pace: each reservation has a virtual time, the previous one's plus ARGV[1] us
--      per segment of the two averaged (a message of N segments sits in the middle of its N
--      slots' time), and the slot is not before it. A connector up to ARGV[7] us behind its
--      pace (a late wake-up) catches up by sending closer together; further behind (it was
--      idle, or stalled long) the pace restarts from now: idle time earns no burst; and
--   3. leaves at most ARGV[5] segments in the window (slot - ARGV[4], slot] with its own added.
-- ARGV[4] is one second plus the jitter a send may have between its slot and the wire; the
-- caller sends no earlier than its slot and, when it finds itself later than that jitter allows,
-- books a fresh slot instead of going late (rate.py). Then no one-second window on the wire,
-- however aligned, holds more than ARGV[5] segments: rule 3 is the ceiling, whatever rule 2
-- allows. A message of N segments is one wire event (one HTTP request), so after a run of
-- one-segment messages it waits until N of them have left its window.
--
-- A slot the caller could not use in time is given back (ARGV[8], its member) when nothing was
-- booked after it: it never reached the wire, so it must not fill a window. (Booked after, it
-- stays: removing it would undercount the later ones' windows.)
--
-- A reservation further ahead than ARGV[3] us is refused (the caller asks again later), so a
-- process never books the connector far into the future.
--
-- KEYS[1]  p:slots:GW  ARGV[1] pace us per segment (a decimal)   ARGV[2] segments
--                      ARGV[3] max ahead us   ARGV[4] window us   ARGV[5] segments per window
--                      ARGV[6] the clock, us: "" = Redis's TIME (tests pass their own)
--                      ARGV[7] catch-up us   ARGV[8] member of a slot given back, or ""
-- Returns {1, slot_us, now_us, member} when reserved, {0, slot_us, now_us, ""} when refused
-- (slot_us is when it would have been), both on the clock used.
local now
if ARGV[6] ~= nil and ARGV[6] ~= '' then
  now = tonumber(ARGV[6])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local spacing = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local window = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local catchup = tonumber(ARGV[7] or '0')

local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if ARGV[8] ~= nil and ARGV[8] ~= '' and last[1] == ARGV[8] then
  redis.call('ZREM', KEYS[1], ARGV[8])
  last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
end

local virtual = now
local booked = 0
local slot = now
if last[1] then
  booked = tonumber(last[2])
  local _, segs, lv = string.match(last[1], '^(%d+):(%d+):(%d+)$')
  virtual = tonumber(lv) + math.ceil((tonumber(segs) + n) / 2 * spacing)
  if virtual < now - catchup then virtual = now end  -- idle, or too far behind: no credit
  slot = math.max(slot, virtual)
  -- The window (slot - window, slot] may hold cap - n segments booked before this one: the
  -- reservation that brought the total to booked + n - cap must be out of it.
  local need = booked + n - cap
  if need > 0 then
    local e = redis.call('ZRANGEBYSCORE', KEYS[1], need, '+inf', 'LIMIT', 0, 1)[1]
    if e == nil then e = last[1] end  -- more segments than a window holds: it goes alone
    local e_at = tonumber(string.match(e, '^(%d+):'))
    slot = math.max(slot, e_at + window)
  end
end

if slot - now > tonumber(ARGV[3]) then
  return {0, slot, now, ''}
end
local member = string.format('%d:%d:%d', slot, n, virtual)
redis.call('ZADD', KEYS[1], booked + n, member)
-- Only the last cap + 1 reservations can matter to the next one's window.
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(cap + 2))
redis.call('PEXPIRE', KEYS[1], math.ceil((slot - now + window) / 1000) + 1000)
return {1, slot, now, member}
