-- An SMPP connector's bind leases, global across processes: a carrier that allows N binds never
-- sees an N+1th, however many processes run the connector. Bind index i (0 <= i < N) is opened
-- only by the process holding its lease; the indexes are spread evenly over the processes that
-- want binds; a process that stops (or dies: its lease runs out) leaves its indexes to the others.
--
-- Called only through BindsArgs (binds.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]  p:binds:{GW}  hash  "<index>" -> "holder|expires ms" (Redis server time): the leases;
--                              "h:<holder>" -> expires ms: the processes that want binds
--                              (their heartbeats, so the spread counts those holding none yet)
-- ARGV[1]  this process's id   ARGV[2] lease length ms   ARGV[3] binds configured (N)
-- ARGV[4]  "tick": heartbeat, renew what this process holds, take free indexes up to its share
--          "release": give up the indexes ARGV[5..] (their binds are closed already)
--          "leave": give up every index and the heartbeat (clean shutdown)
--
-- "tick" returns {share, held, taken, surplus}: the indexes held (renewed) after the call, those
-- newly taken (open their binds now), and those held beyond the share (close their binds, then
-- "release" them; they stay held and renewed until then, so the count at the SMSC never goes
-- above N while binds move). The share: N / live processes, the remainder going to those that
-- hold the most already (then by id), so a rebalance moves as few binds as it can. An index is
-- free when it has no lease or its lease expired; an index >= N (N was lowered) is dropped once
-- its lease expires and is reported as surplus to its holder.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, ttl, n, mode = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]

local all = redis.call('HGETALL', KEYS[1])
local leases, live = {}, {}
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if string.sub(f, 1, 2) == 'h:' then
    if tonumber(v) > now then live[string.sub(f, 3)] = true else redis.call('HDEL', KEYS[1], f) end
  else
    local who, exp = string.match(v, '^(.*)|(%d+)$')
    if tonumber(exp) > now then leases[tonumber(f)] = who else redis.call('HDEL', KEYS[1], f) end
  end
end

if mode == 'release' or mode == 'leave' then
  local list = {}
  if mode == 'leave' then
    redis.call('HDEL', KEYS[1], 'h:' .. me)
    for i, who in pairs(leases) do list[#list + 1] = i end
  else
    for j = 5, #ARGV do list[#list + 1] = tonumber(ARGV[j]) end
  end
  for _, i in ipairs(list) do
    if leases[i] == me then redis.call('HDEL', KEYS[1], tostring(i)) end
  end
  return {}
end

redis.call('HSET', KEYS[1], 'h:' .. me, now + ttl)
live[me] = true
local count, holders = {}, {}
for who in pairs(live) do count[who] = 0; holders[#holders + 1] = who end
for i, who in pairs(leases) do
  if count[who] ~= nil and i < n then count[who] = count[who] + 1 end
end
table.sort(holders, function(a, b)
  if count[a] ~= count[b] then return count[a] > count[b] end
  return a < b
end)
local share = math.floor(n / #holders)
for rank, who in ipairs(holders) do
  if who == me and rank <= n % #holders then share = share + 1 end
end

local value = me .. '|' .. (now + ttl)
local held, surplus, taken = {}, {}, {}
for i, who in pairs(leases) do
  if who == me then
    redis.call('HSET', KEYS[1], tostring(i), value)
    held[#held + 1] = i
  end
end
table.sort(held)
local kept = 0
for _, i in ipairs(held) do
  if i < n and kept < share then kept = kept + 1 else surplus[#surplus + 1] = i end
end
for i = 0, n - 1 do
  if kept >= share then break end
  if leases[i] == nil then
    redis.call('HSET', KEYS[1], tostring(i), value)
    held[#held + 1] = i
    taken[#taken + 1] = i
    kept = kept + 1
  end
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return {share, held, taken, surplus}
