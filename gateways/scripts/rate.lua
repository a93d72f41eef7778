-- A connector's rate, shared by every process sending through it: reserve the next send slot,
-- or move a sent one's record to when it really left.
--
-- The carrier counts what arrives in any one-second window, so that is what is bounded, exactly:
-- every reservation is logged (KEYS[1], a zset: score = segments booked so far, cumulative, in
-- the order of the times they are counted at; member = "at_us:segments:virtual_us", and
-- ":rSLOT_US" after a restamp) and a new one is placed at the earliest time that
--   1. is now or later (a slot is when the send leaves: never in the past), and not before the
--      last one logged (the log stays in time order); and
--   2. keeps the pace: each reservation has a virtual time, the previous one's plus ARGV[1] us
--      per segment of the two averaged (a message of N segments sits in the middle of its N
--      slots' time), and the slot is not before it. A connector up to ARGV[7] us behind its
--      pace (a late wake-up) catches up by sending closer together; further behind (it was
--      idle, or stalled long) the pace restarts from now: idle time earns no burst; and
--   3. leaves at most ARGV[5] segments in the window (slot - ARGV[4], slot] with its own added.
-- ARGV[4] is one second plus the jitter a send may have between its logged time and the wire:
-- a send leaves no earlier than its slot, and within that jitter of it or else it is restamped
-- (below). Then no window of ARGV[4] us ending at a logged time holds more than ARGV[5]
-- segments, so no one-second window on the wire, however aligned, does: rule 3 is the ceiling,
-- whatever rule 2 allows. A message of N segments is one wire event (one HTTP request), so
-- after a run of one-segment messages it waits until N of them have left its window.
--
-- Restamp (ARGV[9] = when the send was handed over, us, on this clock; ARGV[8] = its member;
-- ARGV[2] = its segments): the send found its slot passed by more than the jitter allows and
-- went anyway. Its record moves from the slot to that time (never before the slot, never after
-- now), in time order: the reservations between count n fewer, those after it unchanged; the
-- pace is untouched. Moving forward it stays inside every window logged after it (they all end
-- before slot + ARGV[4]), and the window ending at its new time holds no more than the one
-- ending at the last reservation before it (or at its slot) did: every logged window still
-- holds at most ARGV[5], and later bookings count it when it went. That needs nothing logged
-- at or after slot + ARGV[4], i.e. the restamp lands before now + ARGV[3] reaches it (bookings
-- are at most ARGV[3] ahead): one that lands later (the sender stalled almost a second between
-- its check and this call) is recorded all the same but replies 2, the ceiling not guaranteed.
-- A member no longer logged (expired) is inserted at its time all the same.
--
-- A slot the caller did not use is given back (ARGV[8], its member, without ARGV[9]) when
-- nothing was booked after it: it never reached the wire, so it must not fill a window. (Booked
-- after, it stays: removing it would undercount the later ones' windows.)
--
-- A reservation further ahead than ARGV[3] us is refused (the caller asks again later), so a
-- process never books the connector far into the future.
--
-- KEYS[1]  p:slots:GW  ARGV[1] pace us per segment (a decimal)   ARGV[2] segments
--                      ARGV[3] max ahead us   ARGV[4] window us   ARGV[5] segments per window
--                      ARGV[6] the clock, us: "" = Redis's TIME (tests pass their own)
--                      ARGV[7] catch-up us   ARGV[8] member of a slot given back or restamped
--                      ARGV[9] restamp: when the send went, us (or "")
--                      ARGV[10] more reservations in the same call: their segments, "2,1,1"
-- Returns {1, slot_us, now_us, member} when reserved, followed by slot_us, member for each of
-- ARGV[10]'s reserved (a prefix of them), {0, slot_us, now_us, ""} when refused (slot_us is
-- when it would have been), both on the clock used; a restamp returns {1 or 2, at_us, now_us,
-- member}.
local now
if ARGV[6] ~= nil and ARGV[6] ~= '' then
  now = tonumber(ARGV[6])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local spacing = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local ahead = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local catchup = tonumber(ARGV[7] or '0')

local function parse(member)  -- at, segments, virtual
  local a, g, v = string.match(member, '^(%d+):(%d+):(%d+)')
  return tonumber(a), tonumber(g), tonumber(v)
end

local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')

if ARGV[9] ~= nil and ARGV[9] ~= '' then
  local member = ARGV[8]
  local slot, segs, virtual = parse(member)
  local at = math.min(math.max(tonumber(ARGV[9]), slot), now)
  local before = 0  -- cumulative score of the one just before its new place
  local rescored = {}  -- score, member, ...: those whose count changes, written at once
  local is_last = true
  local score = redis.call('ZSCORE', KEYS[1], member)
  if score and at >= slot then
    -- It moves later, past the ones logged after it at or before its new time: they now come
    -- before it and count n fewer. The ones after its new place count it as they did.
    before = tonumber(score) - n
    local rank = redis.call('ZRANK', KEYS[1], member) + 1
    while is_last do  -- a few at a time: only those booked ahead are after it
      local chunk = redis.call('ZRANGE', KEYS[1], rank, rank + 7, 'WITHSCORES')
      if #chunk == 0 then break end
      for i = 1, #chunk, 2 do
        if parse(chunk[i]) > at then
          is_last = false
          break
        end
        before = tonumber(chunk[i + 1]) - n
        rescored[#rescored + 1] = before
        rescored[#rescored + 1] = chunk[i]
      end
      rank = rank + 8
    end
    redis.call('ZREM', KEYS[1], member)
  else
    -- No longer logged (expired), or earlier than its slot (a clock passed in): out of the log,
    -- the ones after it counting n fewer; in at its time, the ones later than that n more.
    if score then
      for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. score, '+inf')) do
        redis.call('ZINCRBY', KEYS[1], -n, m)
      end
      redis.call('ZREM', KEYS[1], member)
    end
    local rank, found = 0, false
    while not found do  -- from the end, a few at a time: only those booked ahead are later
      local chunk = redis.call('ZREVRANGE', KEYS[1], rank, rank + 7, 'WITHSCORES')
      if #chunk == 0 then break end
      for i = 1, #chunk, 2 do
        local t_at, t_segs = parse(chunk[i])
        if t_at <= at then
          before = tonumber(chunk[i + 1])
          found = true
          break
        end
        is_last = false
        rescored[#rescored + 1] = tonumber(chunk[i + 1]) + n
        rescored[#rescored + 1] = chunk[i]
        before = tonumber(chunk[i + 1]) - t_segs
      end
      rank = rank + 8
    end
  end
  for i = 1, #rescored, 200 do
    redis.call('ZADD', KEYS[1], unpack(rescored, i, math.min(i + 199, #rescored)))
  end
  if is_last and last[1] then  -- it is the last now: it carries the pace, unchanged
    local _a
    _a, segs, virtual = parse(last[1])
  end
  local moved = string.format('%d:%d:%d:r%d', at, segs, virtual, slot)
  redis.call('ZADD', KEYS[1], before + n, moved)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(cap + 2))
  if redis.call('PTTL', KEYS[1]) < 0 then
    redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  end
  local status = 1
  if now + ahead >= slot + window then status = 2 end
  return {status, at, now, moved}
end

if ARGV[8] ~= nil and ARGV[8] ~= '' and last[1] == ARGV[8] then
  redis.call('ZREM', KEYS[1], ARGV[8])
  last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
end

-- One reservation of k segments after the last one logged: its slot and member, or nil and
-- when it would have been (beyond the horizon: nothing booked).
local function book(k)
  local virtual = now
  local booked = 0
  local slot = now
  if last[1] then
    booked = tonumber(last[2])
    local l_at, segs, lv = parse(last[1])
    virtual = lv + math.ceil((segs + k) / 2 * spacing)
    if virtual < now - catchup then virtual = now end  -- idle, or too far behind: no credit
    slot = math.max(slot, virtual, l_at)
    -- The window (slot - window, slot] may hold cap - k segments booked before this one: the
    -- reservation that brought the total to booked + k - cap must be out of it.
    local need = booked + k - cap
    if need > 0 then
      local e = redis.call('ZRANGEBYSCORE', KEYS[1], need, '+inf', 'LIMIT', 0, 1)[1]
      if e == nil then e = last[1] end  -- more segments than a window holds: it goes alone
      slot = math.max(slot, parse(e) + window)
    end
  end
  if slot - now > ahead then
    return nil, slot
  end
  local member = string.format('%d:%d:%d', slot, k, virtual)
  redis.call('ZADD', KEYS[1], booked + k, member)
  last = {member, booked + k}
  return member, slot
end

local member, slot = book(n)
if member == nil then
  return {0, slot, now, ''}
end
local reply = {1, slot, now, member}
-- ARGV[10]: more reservations after this one, in the same call ("2,1,1": their segments, in
-- order), exactly as that many calls one after the other at the same instant would book them;
-- the first beyond the horizon ends the list (the caller asks again for the rest).
if ARGV[10] ~= nil and ARGV[10] ~= '' then
  for k in string.gmatch(ARGV[10], '%d+') do
    local m, s = book(tonumber(k))
    if m == nil then break end
    reply[#reply + 1] = s
    reply[#reply + 1] = m
    slot = s
  end
end
-- Only the last cap + 1 reservations can matter to the next one's window.
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(cap + 2))
redis.call('PEXPIRE', KEYS[1], math.ceil((slot - now + window) / 1000) + 1000)
return reply
