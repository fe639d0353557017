-- Settle an unacked entry only if it is still the one that was read (the WATCH of kombu's
-- restore transaction, as a compare-and-set that works on a shared connection).
--
-- KEYS[1] = unacked, KEYS[2] = unacked_index, KEYS[3..] = destination lists.
-- ARGV[1] = delivery tag, ARGV[2] = the unacked value that was read,
-- ARGV[3] = 'RPUSH' or 'LPUSH', ARGV[4] = the element to push onto every destination.
-- Returns 1 when settled, 0 when the entry changed or vanished meanwhile.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
for i = 3, #KEYS do
  redis.call(ARGV[3], KEYS[i], ARGV[4])
end
return 1
