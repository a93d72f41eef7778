-- Shard leases: which worker reads which inbound shard. One owner per shard at a time, so one
-- contact's events are only ever processed by one worker; shards spread evenly over the live
-- workers; a dead worker's shards are taken over once its lease runs out, or at once when it
-- is known to be dead (its supervisor calls "leave" in its name).
--
-- Called only through LeaseArgs (lease.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]  p:{l}:lease:R  hash  shard -> "worker|expires ms" (Redis server time)
-- KEYS[2]  p:{l}:live:R   zset  worker -> heartbeat expiry ms (R: the role, worker or sender)
-- ARGV[1]  this worker's id   ARGV[2] lease length ms   ARGV[3] number of shards
-- ARGV[4]  "tick": heartbeat, renew what this worker holds, take free shards up to its share
--          "release": give up the shards ARGV[6..] (this worker finished with them)
--          "leave": give up every shard and the heartbeat (clean shutdown, or a dead worker)
-- ARGV[5]  the channel (p:{l}:changed:R) told this worker's id when the shares change: a
--          worker joined or left (or its heartbeat expired), or shards were given up; the
--          other workers renew at once instead of at their next period, so freed shards are
--          read again within milliseconds (a missed message only costs that period)
--
-- "tick" returns {share, held shards, shards newly taken}; a shard is free when it has no lease
-- or its lease expired. Newly taken shards may hold a previous owner's pending entries: the
-- caller claims them before reading anything new.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, ttl, n, mode, channel = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]

local function owner_of(s)
  local cur = redis.call('HGET', KEYS[1], s)
  if not cur then return nil, 0 end
  local who, exp = string.match(cur, '^(.*)|(%d+)$')
  return who, tonumber(exp)
end

if mode == 'release' or mode == 'leave' then
  local list, changed = {}, 0
  if mode == 'leave' then
    for s = 0, n - 1 do list[#list + 1] = tostring(s) end
    changed = redis.call('ZREM', KEYS[2], me)
  else
    for i = 6, #ARGV do list[#list + 1] = ARGV[i] end
  end
  for _, s in ipairs(list) do
    if owner_of(s) == me then
      redis.call('HDEL', KEYS[1], s)
      changed = 1
    end
  end
  if changed > 0 then redis.call('PUBLISH', channel, me) end
  return {}
end

local joined = redis.call('ZADD', KEYS[2], now + ttl, me)
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if joined + expired > 0 then redis.call('PUBLISH', channel, me) end
local live = redis.call('ZCARD', KEYS[2])
local share = math.ceil(n / live)
local held, free = {}, {}
for s = 0, n - 1 do
  local who, exp = owner_of(s)
  if who == me then
    held[#held + 1] = s
  elseif who == nil or exp <= now then
    free[#free + 1] = s
  end
end
local value = me .. '|' .. (now + ttl)
for _, s in ipairs(held) do redis.call('HSET', KEYS[1], s, value) end
local taken = {}
for _, s in ipairs(free) do
  if #held >= share then break end
  redis.call('HSET', KEYS[1], s, value)
  held[#held + 1] = s
  taken[#taken + 1] = s
end
return {share, held, taken}
