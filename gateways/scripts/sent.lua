-- Record a send in one call, on a single Redis only: provider_id.lua then status.lua then the
-- parked receipt's DEL (gateways/receipts.py's steps 1-3), atomically. The two scripts touch two
-- slots (the connector's {GW:K} and the contact's shard T), so a Redis Cluster runs them as two
-- calls; one server runs both at once, saving a round trip and a script call per send.
--
-- Not run alone: gateways/scripts/__init__.py puts provider_id.lua and status.lua in front of
-- this, each as a function of its own KEYS and ARGV (``provider_id(KEYS, ARGV)``,
-- ``status(KEYS, ARGV)``), so each keeps its contract and its tests.
--
-- KEYS[1..2]  provider_id.lua's KEYS (the map's bucket, the parked receipt)
-- KEYS[3..5]  status.lua's KEYS (records, outcome events, the lane when there is an entry)
-- ARGV[1..3]  provider_id.lua's ARGV
-- ARGV[4..14] status.lua's ARGV[1..11]; its 11th (a parked receipt) is what provider_id found
-- Returns status.lua's answer (1, or 0 when the record is gone).
local parked = provider_id({KEYS[1], KEYS[2]}, {ARGV[1], ARGV[2], ARGV[3]})
local sargv = {}
for i = 4, #ARGV do
  sargv[#sargv + 1] = ARGV[i]
end
sargv[11] = parked
local done = status({KEYS[3], KEYS[4], KEYS[5]}, sargv)
if parked ~= '' then
  redis.call('DEL', KEYS[2])
end
return done
