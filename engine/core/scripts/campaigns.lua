-- Set the campaign timers of one shard's contacts after their date fields were written (a PUT,
-- an import, a campaign's backfill): each (contact, campaign, event) has one timer of kind "k"
-- whose score is its next fire. Atomic per call, so a timer that fires meanwhile is either
-- fired or rescheduled, never both.
--
-- Called only through CampaignTimersArgs (campaigns.py) beside this file, which builds the KEYS
-- and ARGV below.
--
-- KEYS[1]  p:tm:T   shard S's timers (zset "N|kind|token" -> due ms; T: the shard's hash tag)
-- ARGV     triples: member "N|k|CAMPAIGN:EVENT", due ms ("" none), keep ms ("" none)
--          due: the next fire. keep: an occurrence already due; a timer still waiting with
--          exactly that score has not fired yet and is left to fire (the one after is scheduled
--          when it does), so rewriting an unchanged field cannot cancel a fire in flight.
--
-- Returns the number of timers scheduled or moved, and the number removed.
local set, removed = 0, 0
for i = 1, #ARGV, 3 do
  local m, due, keep = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local cur = redis.call('ZSCORE', KEYS[1], m)
  if keep ~= '' and cur and tonumber(cur) == tonumber(keep) then
    -- left to fire
  elseif due ~= '' then
    if not cur or tonumber(cur) ~= tonumber(due) then
      redis.call('ZADD', KEYS[1], due, m)
      set = set + 1
    end
  elseif cur then
    redis.call('ZREM', KEYS[1], m)
    removed = removed + 1
  end
end
return {set, removed}
