-- Replay dead letters of one outcome webhook: each letter still in the dead stream is re-added
-- to the webhook's replay stream (its event and original event id) and deleted from the dead
-- stream, atomically, so a letter is in exactly one of the two (two replays never send it twice).
--
-- Called only through WebhookReplayArgs (webhook_replay.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]  p:whdead:{wI}  the webhook's dead letters (fields: id, e, error, attempts, at)
-- KEYS[2]  p:whre:{wI}    the webhook's replay stream, read by its dispatcher with every p:fx:T
--                         (both carry the tag {wI}: one slot)
-- ARGV     entry ids of dead letters to replay
-- Returns how many were replayed (letters already gone are skipped).
local moved = 0
for i = 1, #ARGV do
  local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #found == 1 then
    local f = found[1][2]
    local id, e
    for j = 1, #f, 2 do
      if f[j] == 'id' then id = f[j + 1] elseif f[j] == 'e' then e = f[j + 1] end
    end
    if id and e then
      redis.call('XADD', KEYS[2], '*', 'id', id, 'e', e)
    end
    redis.call('XDEL', KEYS[1], ARGV[i])
    moved = moved + 1
  end
end
return moved
