-- Appends the frame `body` makes to the topic (KEYS[1] = meta, KEYS[2] = log) and publishes
-- it; ARGV = [channel, candidate_epoch, body, max_len, max_bytes, ttl_ms]. Returns
-- {epoch, seq}.
local function publish_frame()
  local epoch = topic_epoch(ARGV[2])
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  local frame = 'hub1 ' .. epoch .. ':' .. string.format('%d', seq) .. '\n' .. ARGV[3]
  local len = redis.call('RPUSH', KEYS[2], frame)
  local bytes = redis.call('HINCRBY', KEYS[1], 'bytes', #frame)
  local max_len = tonumber(ARGV[4])
  local max_bytes = tonumber(ARGV[5])
  while len > 0 and (len > max_len or bytes > max_bytes) do
    local old = redis.call('LPOP', KEYS[2])
    if not old then break end
    bytes = redis.call('HINCRBY', KEYS[1], 'bytes', -#old)
    len = len - 1
  end
  local ttl = tonumber(ARGV[6])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
  redis.call('PUBLISH', ARGV[1], frame)
  return {epoch, seq}
end
