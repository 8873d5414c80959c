-- Pi: approximates pi with the Nilakantha series. The number of terms
-- comes from the request ({"n": 28}); 28 when absent. The result is mailed
-- to 'aw.res.pi' and published on the 'numbers' stream with subject
-- 'pi.<n>', as the original's pi service did, and returned as the reply.
local ok, request = pcall(require('cjson').decode, alaskaContext)
local n = (ok and type(request) == 'table' and tonumber(request.n)) or 28

local sum, j = 3.0, 2
for i = 1, n do
  local term = 4.0 / (j * (j + 1) * (j + 2))
  if i % 2 == 1 then sum = sum + term else sum = sum - term end
  j = j + 2
end

local subject = 'pi.' .. math.floor(n)
sendTo(subject, sum, 'aw.res.pi')
send(subject, sum, 'numbers')
return tostring(sum)
