-- Take up to N messages and record each in kombu's ack-emulation tables, atomically.
--
-- KEYS[1] = unacked (HASH), KEYS[2] = unacked_index (ZSET), KEYS[3] = celeriac.dead_letter (LIST),
-- KEYS[4..] = the list keys, priority step major: the Q queues of the cycle (in the order the
--   caller's cycle had when it called) at step 0, then the same Q queues at step 3, 6 and 9.
-- ARGV[1] = now, unix seconds as a float string, or '' for the server's clock (a take sent ahead,
--   pipelined behind a blocking BLMOVE, runs later than it was written); ARGV[2] = N, the most
--   messages to take;
-- ARGV[3..] = the Q queue names, in the cycle's order (their count gives Q).
--
-- Messages are taken one after another exactly as a kombu consumer doing N BRPOPs would take
-- them: each time the first non-empty key in BRPOP order (priority step first, then the
-- queue cycle), and after each message its queue moves to the end of the cycle (kombu's
-- `_queue_cycle.rotate`). A key found empty stays empty for the rest of the script (nothing
-- else runs meanwhile), so it is not popped twice.
--
-- Returns a flat array (empty when every list is empty) of four items per message, in taking
-- order:
--   1, q, envelope, tag  a message from queue q (1-based index into ARGV[3..]), recorded in
--                        unacked under tag, or
--   2, q, reason, ''     a message that could not be recorded and was moved to the dead-letter list.
-- Each envelope stays byte for byte as it was popped.

-- Python json.dumps (ensure_ascii) of a string. Bytes that are not valid UTF-8 are taken as
-- Latin-1 characters, so any list element can be written into a JSON document.
local function pystr(s)
  -- Fast path: printable ASCII without '"' or '\' is written as it is. Python escapes every
  -- other byte, DEL (0x7f) included (`[^\ -~]` in json.encoder's ESCAPE_ASCII).
  if not string.find(s, '[%z\1-\31"\\\127-\255]') then
    return '"' .. s .. '"'
  end
  local out = {'"'}
  local i, n = 1, #s
  while i <= n do
    local b = string.byte(s, i)
    local cp, len = nil, 1
    if b < 0x80 then
      cp = b
    elseif b >= 0xC2 and b <= 0xDF and i + 1 <= n then
      local c1 = string.byte(s, i + 1)
      if c1 >= 0x80 and c1 <= 0xBF then cp = (b - 0xC0) * 64 + (c1 - 0x80); len = 2 end
    elseif b >= 0xE0 and b <= 0xEF and i + 2 <= n then
      local c1, c2 = string.byte(s, i + 1, i + 2)
      if c1 >= 0x80 and c1 <= 0xBF and c2 >= 0x80 and c2 <= 0xBF then
        local v = (b - 0xE0) * 4096 + (c1 - 0x80) * 64 + (c2 - 0x80)
        if v >= 0x800 and (v < 0xD800 or v > 0xDFFF) then cp = v; len = 3 end
      end
    elseif b >= 0xF0 and b <= 0xF4 and i + 3 <= n then
      local c1, c2, c3 = string.byte(s, i + 1, i + 3)
      if c1 >= 0x80 and c1 <= 0xBF and c2 >= 0x80 and c2 <= 0xBF and c3 >= 0x80 and c3 <= 0xBF then
        local v = (b - 0xF0) * 262144 + (c1 - 0x80) * 4096 + (c2 - 0x80) * 64 + (c3 - 0x80)
        if v >= 0x10000 and v <= 0x10FFFF then cp = v; len = 4 end
      end
    end
    if cp == nil then cp = b; len = 1 end
    if cp == 34 then out[#out + 1] = '\\"'
    elseif cp == 92 then out[#out + 1] = '\\\\'
    elseif cp == 10 then out[#out + 1] = '\\n'
    elseif cp == 13 then out[#out + 1] = '\\r'
    elseif cp == 9 then out[#out + 1] = '\\t'
    elseif cp == 8 then out[#out + 1] = '\\b'
    elseif cp == 12 then out[#out + 1] = '\\f'
    elseif cp < 0x20 or cp == 0x7f then out[#out + 1] = string.format('\\u%04x', cp)
    elseif cp < 0x80 then out[#out + 1] = string.char(cp)
    elseif cp < 0x10000 then out[#out + 1] = string.format('\\u%04x', cp)
    else
      local v = cp - 0x10000
      out[#out + 1] = string.format('\\u%04x\\u%04x', 0xD800 + math.floor(v / 1024), 0xDC00 + (v % 1024))
    end
    i = i + len
  end
  out[#out + 1] = '"'
  return table.concat(out)
end

-- kombu's envelope properties -> why they cannot be recorded (nil when they can), tag,
-- exchange, routing key.
local function check(props)
  if type(props) ~= 'table' then
    return 'envelope has no properties object'
  end
  local tag = props['delivery_tag']
  local di = props['delivery_info']
  if type(tag) ~= 'string' or tag == '' then
    return 'envelope has no string properties.delivery_tag'
  end
  if type(di) ~= 'table' or type(di['exchange']) ~= 'string' or type(di['routing_key']) ~= 'string' then
    return 'envelope has no properties.delivery_info with string exchange and routing_key'
  end
  return nil, tag, di['exchange'], di['routing_key']
end

local PROPS = ', "properties": {'
-- How far from the end the properties object is looked for (kombu writes it last).
local PROPS_WINDOW = 2048

-- Why an envelope cannot be recorded (nil when it can), and its tag, exchange, routing key.
--
-- Fast path: kombu writes `properties` as the envelope's last key, so the text ends with
-- `, "properties": {...}}`. A match of `, "properties": {` is always a real key (its quote
-- follows a space, so it cannot be an escaped quote inside a string), and when the text
-- from its `{` up to the envelope's last character but one decodes as one complete JSON
-- value, that object is the last member of the top-level object: the envelope's
-- properties. Decoding that object alone costs a fraction of decoding the envelope. The
-- rest of the envelope is not checked here; the consumer parses it all, and dead-letters
-- (under the tag recorded here) what is not JSON.
local function inspect(env)
  local n = #env
  if n > 18 and string.byte(env, n) == 125 then
    local at = string.find(env, PROPS, n > PROPS_WINDOW and n - PROPS_WINDOW or 1, true)
    while at do
      local ok, props = pcall(cjson.decode, string.sub(env, at + 16, n - 1))
      if ok then
        return check(props)
      end
      at = string.find(env, PROPS, at + 1, true)
    end
  end
  local ok, msg = pcall(cjson.decode, env)
  if not ok then
    return 'envelope is not valid JSON: ' .. tostring(msg)
  end
  if type(msg) ~= 'table' then
    return 'envelope has no properties object'
  end
  return check(msg['properties'])
end

local now = ARGV[1]
if now == '' then
  local t = redis.call('TIME')
  now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
local want = tonumber(ARGV[2])
local nq = #ARGV - 2
local nsteps = (#KEYS - 3) / nq
-- The queue cycle as indexes 1..nq; kombu rotates the queue just served to the end.
local cycle = {}
for q = 1, nq do cycle[q] = q end
local empty = {}
-- The reply, flat: kind, queue, payload, tag for every message taken.
local out = {}
local count = 0
-- ZADD / HSET arguments, sent once for the whole batch (kombu: one ZADD + HSET per message;
-- the resulting tables are the same).
local scores, fields = {}, {}
-- A small cache so the same exchange / routing key is not escaped again for every message.
local escaped = {}
local function esc(s)
  local e = escaped[s]
  if not e then e = pystr(s); escaped[s] = e end
  return e
end

-- Envelopes popped ahead from the key kombu would serve next anyway (see below).
local ahead, ahead_next, ahead_key = {}, 1, nil

while count < want do
  local env, from = nil, nil
  for step = 0, nsteps - 1 do
    for pos = 1, nq do
      local q = cycle[pos]
      local k = 3 + step * nq + q
      if not empty[k] then
        if k == ahead_key and ahead[ahead_next] then
          env = ahead[ahead_next]
          ahead_next = ahead_next + 1
        else
          env = redis.call('RPOP', KEYS[k])
        end
        if env then
          from = pos
          -- When every other key at this step and before is known to be empty, this key
          -- stays first in BRPOP order (its queue only moves behind empty ones), so the
          -- rest of the batch comes from it: pop it in one RPOP with a count.
          if ahead_key ~= k and not ahead[ahead_next] and count + 1 < want then
            local alone = true
            for s2 = 0, step do
              for q2 = 1, nq do
                local k2 = 3 + s2 * nq + q2
                if k2 ~= k and not empty[k2] then alone = false end
              end
            end
            if alone then
              ahead = redis.call('RPOP', KEYS[k], want - count - 1) or {}
              ahead_next, ahead_key = 1, k
            end
          end
          break
        end
        empty[k] = true
      end
    end
    if env then break end
  end
  if not env then break end
  local q = cycle[from]
  table.remove(cycle, from)
  cycle[nq] = q
  local reason, tag, ex, rk = inspect(env)
  if reason then
    redis.call('LPUSH', KEYS[3], '{"reason": ' .. pystr(reason) .. ', "queue": ' .. pystr(ARGV[q + 2]) ..
      ', "received_at": ' .. now .. ', "envelope": ' .. pystr(env) .. '}')
    out[#out + 1] = 2
    out[#out + 1] = q
    out[#out + 1] = reason
    out[#out + 1] = ''
    count = count + 1
  else
    -- kombu's QoS.append: ZADD unacked_index <time> <tag>; HSET unacked <tag> [envelope, exchange, routing_key]
    scores[#scores + 1] = now
    scores[#scores + 1] = tag
    fields[#fields + 1] = tag
    fields[#fields + 1] = '[' .. env .. ', ' .. esc(ex) .. ', ' .. esc(rk) .. ']'
    out[#out + 1] = 1
    out[#out + 1] = q
    out[#out + 1] = env
    out[#out + 1] = tag
    count = count + 1
  end
end
if #scores > 0 then
  redis.call('ZADD', KEYS[2], unpack(scores))
  redis.call('HSET', KEYS[1], unpack(fields))
end
return out
