-- Dump: decodes the request (JSON) and prints it to the worker's log, one
-- "key = value" line per field, sorted; replies with the decoded table.
-- (The original used Penlight's pretty-printer; this needs nothing.)
local cjson = require 'cjson'

local function show(value, indent, out)
  if type(value) ~= 'table' then
    out[#out + 1] = indent .. tostring(value)
    return
  end
  local keys = {}
  for k in pairs(value) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    local v = value[k]
    if type(v) == 'table' then
      out[#out + 1] = indent .. tostring(k) .. ' ='
      show(v, indent .. '    ', out)
    else
      out[#out + 1] = indent .. tostring(k) .. ' = ' .. (v == cjson.null and 'null' or tostring(v))
    end
  end
end

local request = cjson.decode(alaskaContext)
local lines = {}
show(request, '  ', lines)
print(('-'):rep(60) .. '\nrequest ' .. alaska.subject .. ' from ' .. alaska.sender)
print(table.concat(lines, '\n'))
return request
