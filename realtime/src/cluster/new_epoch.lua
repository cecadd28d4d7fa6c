local function new_epoch(candidate)
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return string.format('%011x', ms) .. string.sub(candidate, -5)
end
