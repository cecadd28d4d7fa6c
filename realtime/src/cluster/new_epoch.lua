local function new_epoch(candidate)
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return string.format('%011x', ms) .. string.sub(candidate, -5)
end

-- The topic's epoch (KEYS[1] = meta, KEYS[2] = log); a topic without one (new, expired, or
-- Redis lost its data) gets a new epoch and an empty log. `made` says which.
local function topic_epoch(candidate)
  local epoch = redis.call('HGET', KEYS[1], 'epoch')
  if epoch then return epoch, false end
  epoch = new_epoch(candidate)
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0, 'bytes', 0)
  return epoch, true
end
