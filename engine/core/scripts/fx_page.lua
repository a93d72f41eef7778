-- One page of one shard's flow outcome stream, already filtered: the readers (reports, result exports,
-- start status, erasure) parse JSON in Python, so entries that cannot match never cross.
--
-- Called only through FxPageArgs (fx_page.py) beside this file, which builds the KEYS and ARGV below.
--
-- KEYS[1]  p:fx:T   shard S's outcome events (each entry has one field, e: the event's JSON)
-- ARGV[1]  where to start: "-" or "(<id>" (after that id)   ARGV[2] entries to read at most
-- ARGV[3]  a string the event's JSON must contain ("" for every event), e.g. '"f":"nps"'
--
-- Returns {next, id1, json1, id2, json2, ...}: next is the id to continue after (""
-- when the stream is exhausted), then the matching entries, oldest first.
local page = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local out = {''}
local needle = ARGV[3]
for _, entry in ipairs(page) do
  local json = entry[2][2]
  if needle == '' or string.find(json, needle, 1, true) then
    out[#out + 1] = entry[1]
    out[#out + 1] = json
  end
end
if #page == tonumber(ARGV[2]) then out[1] = page[#page][1] end
return out
