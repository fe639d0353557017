-- Release the unacked_mutex only if we still own it (redis-py's Lock.release).
-- KEYS[1] = unacked_mutex, ARGV[1] = our token.
local token = redis.call('GET', KEYS[1])
if not token or token ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
