-- Store a task's state the way Celery's Redis backend does, in one round trip:
--   GET (a stored SUCCESS is final: stop), then SETEX (or SET) and PUBLISH of the value.
-- Celery sends the GET, then MULTI SETEX PUBLISH EXEC; here the same commands run in one
-- atomic step, so nothing can come between the check and the write either.
--
-- KEYS[1]  celery-task-meta-<id>
-- ARGV[1]  the encoded state (JSON or msgpack), stored and published as is
-- ARGV[2]  seconds until it expires, or "" for no expiry (plain SET)
-- Returns 1 when stored and published, 0 when a SUCCESS was already there.
local current = redis.call('GET', KEYS[1])
if current then
  -- A JSON result is an object, a msgpack one a map (as ResultMeta::from_slice reads them);
  -- anything unreadable is overwritten, as Celery's reader would fail on it too.
  local ok, meta
  if string.match(current, '^%s*{') then
    ok, meta = pcall(cjson.decode, current)
  else
    ok, meta = pcall(cmsgpack.unpack, current)
  end
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
    return 0
  end
end
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
