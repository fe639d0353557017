-- Take one message and record it in kombu's ack-emulation tables, atomically.
--
-- KEYS[1] = unacked (HASH), KEYS[2] = unacked_index (ZSET), KEYS[3] = celeriac.dead_letter (LIST),
-- KEYS[4..] = the list keys in BRPOP order (priority first, then queue).
-- ARGV[1] = now, unix seconds as a float string; ARGV[2..] = the queue name of each list key.
--
-- Returns nil when every list is empty,
--   {1, i, envelope}  when the message from list key i (1-based) was taken, or
--   {2, i, reason}    when it could not be recorded and was moved to the dead-letter list.
-- The envelope stays byte for byte as it was popped.

-- Python json.dumps (ensure_ascii) of a string. Bytes that are not valid UTF-8 are taken as
-- Latin-1 characters, so any list element can be written into a JSON document.
local function pystr(s)
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
    elseif cp < 0x20 then out[#out + 1] = string.format('\\u%04x', cp)
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

local now = ARGV[1]
for i = 4, #KEYS do
  local env = redis.call('RPOP', KEYS[i])
  if env then
    local reason = nil
    local ok, msg = pcall(cjson.decode, env)
    local tag, ex, rk
    if not ok then
      reason = 'envelope is not valid JSON: ' .. tostring(msg)
    elseif type(msg) ~= 'table' or type(msg['properties']) ~= 'table' then
      reason = 'envelope has no properties object'
    else
      local props = msg['properties']
      tag = props['delivery_tag']
      local di = props['delivery_info']
      if type(tag) ~= 'string' or tag == '' then
        reason = 'envelope has no string properties.delivery_tag'
      elseif type(di) ~= 'table' or type(di['exchange']) ~= 'string' or type(di['routing_key']) ~= 'string' then
        reason = 'envelope has no properties.delivery_info with string exchange and routing_key'
      else
        ex = di['exchange']
        rk = di['routing_key']
      end
    end
    if reason then
      redis.call('LPUSH', KEYS[3], '{"reason": ' .. pystr(reason) .. ', "queue": ' .. pystr(ARGV[i - 2]) ..
        ', "received_at": ' .. now .. ', "envelope": ' .. pystr(env) .. '}')
      return {2, i - 3, reason}
    end
    -- kombu's QoS.append: ZADD unacked_index <time> <tag>; HSET unacked <tag> [envelope, exchange, routing_key]
    redis.call('ZADD', KEYS[2], now, tag)
    redis.call('HSET', KEYS[1], tag, '[' .. env .. ', ' .. pystr(ex) .. ', ' .. pystr(rk) .. ']')
    return {1, i - 3, env}
  end
end
return nil
