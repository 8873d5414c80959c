-- The sandbox of one Alaska Lua VM. Run once, when the VM is created, with
-- the full standard library (and `debug`) still in place; it keeps private
-- references to what it needs, takes away from scripts everything that
-- reaches the VM's internals, and returns the runner that runs a request.
--
-- What a script must never be able to do (each closed here, see docs):
--  * outlive its time or memory budget: no debug library functions that
--    reach hooks, locals, upvalues, the registry or raw metatables; pcall,
--    xpcall and coroutine.resume re-raise a breach; no __gc finalizers
--    (they run outside any request); collectgarbage cannot stop the
--    collector; no C modules (native code ignores the budget hook); no
--    child processes (os.execute, io.popen) unless the operator allows it;
--  * leave state for later requests: a fresh global table per request
--    whose metatable is protected; the standard library tables are
--    read-only views; the string metatable is protected; package.loaded
--    does not hand out the real global table.
local breached, encode, sleep, shared_fns, options, arm_memory, meta, log_print, reach = ...

local G = _G
local setmetatable, getmetatable, rawset, rawget = setmetatable, getmetatable, rawset, rawget
local select, type, tostring, error, assert, next, pairs = select, type, tostring, error, assert, next, pairs
local raw_pcall, raw_xpcall, co_resume, co_close = pcall, xpcall, coroutine.resume, coroutine.close
local raw_load, raw_loadfile, raw_collect = load, loadfile, collectgarbage
local traceback, raw_getinfo = debug.traceback, debug.getinfo
local string_gsub, string_find, table_unpack, table_concat = string.gsub, string.find, table.unpack, table.concat

local function refuse(what, why)
  return function()
    error(what .. ' is not allowed in an alaska worker: ' .. why, 2)
  end
end

-- Budget breaches cannot be caught ------------------------------------
local function pass(ok, ...)
  if not ok and breached((...)) then error((...), 0) end
  return ok, ...
end
G.pcall = function(f, ...) return pass(raw_pcall(f, ...)) end
G.xpcall = function(f, h, ...)
  return pass(raw_xpcall(f, function(e)
    if breached(e) then return e end
    return h(e)
  end, ...))
end
-- The worker's own request coroutines (see the runner): a script never
-- gets one (coroutine.running answers as from the main thread), and could
-- not resume or close one if it did.
local worker_cos = setmetatable({}, { __mode = 'k' })
local main_thread = coroutine.running()
local raw_running = coroutine.running
local function not_yours(co)
  if worker_cos[co] then error('cannot resume or close the worker\'s own coroutine', 3) end
end
local co_wrapped = function(co, ...) not_yours(co) return pass(co_resume(co, ...)) end
-- coroutine.close runs the coroutine's pending __close handlers and
-- returns their error instead of raising it.
local co_closed = function(co) not_yours(co) return pass(co_close(co)) end
local co_running_view = function()
  local co, main = raw_running()
  if worker_cos[co] then return main_thread, true end
  return co, main
end

-- Text chunks only ------------------------------------------------------
-- A binary chunk is refused by every route (load, loadfile, dofile,
-- require): the VM does not verify bytecode, and a patched chunk crashes
-- the process. `load` with a reader function runs the reader inside the
-- load, which catches its errors: a budget breach there is raised again.
local BYTECODE = 'bytecode is not allowed in an alaska worker: load text chunks only '
  .. '(a binary chunk is not verified and can crash the worker)'
local function text_only(f, msg)
  if f == nil and breached(msg) then error(msg, 0) end
  if f == nil and type(msg) == 'string' and string_find(msg, 'attempt to load a binary chunk', 1, true) then
    return nil, BYTECODE
  end
  return f, msg
end
-- The environment of a chunk loaded without one: the running request's
-- own (never the shared globals, which would carry what it sets into
-- every later request).
local cur_env
local function default_env() return cur_env or setmetatable({}, { __index = G }) end
G.load = function(chunk, name, mode, ...)
  if select('#', ...) > 0 then return text_only(raw_load(chunk, name, 't', ...)) end
  return text_only(raw_load(chunk, name, 't', default_env()))
end
G.loadfile = function(name, mode, ...)
  if select('#', ...) > 0 then return text_only(raw_loadfile(name, 't', ...)) end
  return text_only(raw_loadfile(name, 't', default_env()))
end
G.dofile = function(name) local f = assert(G.loadfile(name)); return f() end

-- print goes to the worker's log, tagged with the script, bounded per
-- request (stdout is /dev/null for a daemon).
G.print = function(...)
  local n = select('#', ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  log_print(table_concat(parts, '\t'))
end

-- No finalizers: they would run outside any request, or inside another's.
G.setmetatable = function(t, mt)
  if type(mt) == 'table' and rawget(mt, '__gc') ~= nil then
    error('__gc metamethods are not allowed in an alaska worker: '
      .. 'a finalizer runs outside the request that made it', 2)
  end
  return setmetatable(t, mt)
end

-- The collector keeps running.
local collect_ok = { collect = true, count = true, step = true, isrunning = true }
G.collectgarbage = function(opt, ...)
  if opt == nil or collect_ok[opt] then return raw_collect(opt, ...) end
  error("collectgarbage('" .. tostring(opt) .. "') is not allowed in an alaska worker: "
    .. 'the collector is shared by every request of this VM', 2)
end

-- Read-only views of shared tables --------------------------------------
local protected = setmetatable({}, { __mode = 'k' })
local function readonly(name, t, writable)
  local view = {}
  setmetatable(view, {
    __index = t,
    __newindex = function(_, k, v)
      if writable and writable[k] then t[k] = v; return end
      error("attempt to change field '" .. tostring(k) .. "' of the shared '" .. name
        .. "' table: it is shared by every request of this VM", 2)
    end,
    __pairs = function() return next, t, nil end,
    __len = function() return #t end,
    __metatable = false,
  })
  protected[view] = true
  return view
end
G.rawset = function(t, k, v)
  if protected[t] then
    error('attempt to rawset a read-only shared table', 2)
  end
  return rawset(t, k, v)
end

-- The debug library: only what cannot reach the VM's internals.
local function safe_getinfo(...)
  local args, n = { ... }, select('#', ...)
  local i = type(args[1]) == 'thread' and 2 or 1
  if type(args[i]) ~= 'number' and type(args[i]) ~= 'function' then
    error("bad argument #" .. i .. " to 'getinfo' (number or function expected)", 2)
  end
  -- 'f' would hand out the functions on the stack (the raw pcall among
  -- them), 'L' the lines of any function: neither is given.
  local what = args[i + 1]
  what = what == nil and 'lnSrtu' or string_gsub(tostring(what), '[fL]', '')
  args[i + 1] = what
  if n < i + 1 then n = i + 1 end
  return raw_getinfo(table_unpack(args, 1, n))
end

local libs = {
  string = G.string, table = G.table, math = G.math, utf8 = G.utf8, io = G.io,
}
local os_fns, co_fns = {}, {}
for k, v in pairs(G.os) do os_fns[k] = v end
for k, v in pairs(G.coroutine) do co_fns[k] = v end
os_fns.exit = refuse('os.exit', 'it would stop the worker')
co_fns.resume = co_wrapped
co_fns.close = co_closed
co_fns.running = co_running_view
libs.os, libs.coroutine = os_fns, co_fns
libs.debug = { traceback = traceback, getinfo = safe_getinfo }
if not options.processes then
  local why = 'a child process cannot be stopped by the time budget; use an exec runner, '
    .. 'or set worker/lua/processes = "1"'
  os_fns.execute = refuse('os.execute', why)
  local io_fns = {}
  for k, v in pairs(G.io) do io_fns[k] = v end
  io_fns.popen = refuse('io.popen', why)
  libs.io = io_fns
end

-- Every file handle shares one metatable: out of reach, or a script could
-- replace a method for later requests or set a finalizer there.
local file_meta = getmetatable(G.io.stdout)
if type(file_meta) == 'table' then file_meta.__metatable = false end

local package, loaded = G.package, G.package.loaded
-- No C modules: native code runs outside the budget hook.
package.loadlib = refuse('package.loadlib', 'native code ignores the time budget')
local searchers = package.searchers
if options.cpath then
  package.cpath = options.cpath
else
  package.cpath = ''
  for i = #searchers, 3, -1 do searchers[i] = nil end
end
-- Lua files through our own searcher: text only, and each module in an
-- environment of its own over the shared globals (what it sets as a
-- global stays in it instead of reaching every request).
local searchpath = package.searchpath
searchers[2] = function(name)
  local file, err = searchpath(name, package.path)
  if not file then return err end
  local f, msg = raw_loadfile(file, 't', setmetatable({}, { __index = G }))
  if not f then
    if string_find(msg, 'attempt to load a binary chunk', 1, true) then msg = BYTECODE end
    error("error loading module '" .. name .. "' from file '" .. file .. "':\n\t" .. msg, 0)
  end
  return f, file
end
-- What each request starts from, whatever the one before set.
local base_path, base_cpath = package.path, package.cpath
for name, t in pairs(libs) do
  local view = readonly(name, t)
  G[name] = view
  loaded[name] = view
end
loaded._G = nil
-- package: path (and cpath when C modules are allowed) may be set for
-- the request; searchers and preload are read-only views; loaded is the
-- one deliberately shared table (modules stay loaded).
local package_fields = {
  searchers = readonly('package.searchers', searchers),
  preload = readonly('package.preload', package.preload),
}
local package_writable = { path = true, cpath = options.cpath ~= nil }
local package_view = setmetatable({}, {
  __index = function(_, k)
    local v = package_fields[k]
    if v ~= nil then return v end
    return package[k]
  end,
  __newindex = function(_, k, v)
    if package_writable[k] then package[k] = v; return end
    error("attempt to change field '" .. tostring(k) .. "' of the shared 'package' table: "
      .. 'it is shared by every request of this VM', 2)
  end,
  __pairs = function() return next, package, nil end,
  __metatable = false,
})
protected[package_view] = true
G.package = package_view
loaded.package = G.package
-- Method calls on strings go through this metatable; nobody may see it.
getmetatable('').__metatable = false

-- Outcomes ----------------------------------------------------------------
-- An outcome is a table holding a private key; the runner looks for it in
-- whatever the script returned.
local OUTCOME = {}
local function count_arg(v, fname, n)
  if v == nil then return nil end
  if type(v) ~= 'number' or v ~= v or v < 0 then
    error("bad argument #" .. n .. " to '" .. fname .. "' (milliseconds expected, got "
      .. tostring(v) .. ")", 3)
  end
  return v
end
local function name_arg(v, fname, n)
  if type(v) ~= 'string' or #v == 0 or #v > 255 then
    error("bad argument #" .. n .. " to '" .. fname .. "' (a string of 1 to 255 bytes expected)", 3)
  end
  return v
end
local api = {
  sleep = sleep,
  schedule = reach.schedule,
  retry = function(after_ms, reason)
    return { [OUTCOME] = 'retry', count_arg(after_ms, 'retry', 1), reason ~= nil and tostring(reason) or nil }
  end,
  fail = function(reason)
    return { [OUTCOME] = 'fail', reason ~= nil and tostring(reason) or 'failed' }
  end,
  drop = function() return { [OUTCOME] = 'drop' } end,
  forward = function(address, subject, content, options)
    local delay
    if options ~= nil then
      if type(options) ~= 'table' then
        error("bad argument #4 to 'forward' (options table or nil expected, got " .. type(options) .. ")", 2)
      end
      delay = count_arg(options.delay, 'forward', 4)
    end
    name_arg(address, 'forward', 1)
    name_arg(subject, 'forward', 2)
    local t = type(content)
    if t == 'number' then content = tostring(content)
    elseif t == 'table' then
      local frames = {}
      for i = 1, #content do
        local f = content[i]
        if type(f) == 'number' then f = tostring(f) end
        if type(f) ~= 'string' then
          error("bad argument #3 to 'forward' (frame " .. i .. " is not a string)", 2)
        end
        frames[i] = f
      end
      content = frames
    elseif t ~= 'string' and t ~= 'nil' then
      error("bad argument #3 to 'forward' (string, list of strings or nil expected, got " .. t .. ")", 2)
    end
    return { [OUTCOME] = 'forward', address, subject, content, delay }
  end,
}
-- alaska.shared: works as alaska.shared:get(k) and alaska.shared.get(k).
local shared = {}
local shared_view = readonly('alaska.shared', shared)
for name, f in pairs(shared_fns) do
  shared[name] = function(a, ...)
    if a == shared_view then return f(...) end
    return f(a, ...)
  end
end
api.shared = shared_view

-- The runner ---------------------------------------------------------------
-- The request's metadata (sender, subject, address, tracker, attempt,
-- hops, frames) is fetched from the worker when a script first reads it,
-- then kept in that request's own `alaska` table: most scripts read none
-- of it, and a request should not pay for what it does not use.
local lazy = {
  sender = true, subject = true, address = true, tracker = true,
  attempt = true, hops = true, frames = true,
}
-- alaskaContext of the request being run (its first frame is lent to the
-- script, so the worker's copy of frame 1 is empty meanwhile).
local cur_ctx
local api_meta = {
  __index = function(t, k)
    if lazy[k] then
      local v = meta(k)
      if k == 'frames' and v[1] ~= nil then v[1] = cur_ctx end
      rawset(t, k, v)
      return v
    end
    return api[k]
  end,
  __metatable = false,
}
local env_meta = { __index = G, __metatable = false }
local function describe(e)
  if type(e) == 'table' then
    local ok, s = raw_pcall(encode, e)
    if ok then return s end
  end
  return tostring(e)
end
-- The traceback shows the script's frames only: the sandbox's own (this
-- chunk, named "alaska", and the C functions that call into it) say
-- nothing to the script's author.
local function handler(e)
  local t = traceback(describe(e), 2)
  t = string_gsub(t, '\n\t[^\n]*alaska:%d+:[^\n]*', '')
  t = string_gsub(t, "\n\t%[C%]: in [%w ]*'raw_[%w_]*'", '')
  t = string_gsub(t, "\n\t%[C%]: in %?$", '')
  t = string_gsub(t, "\n\t%[C%]: in function 'xpcall'", '')
  return t
end
-- Only the first value a script returns counts, as before outcomes existed.
local function finish(ok, v)
  if not ok then return false, v end
  if type(v) == 'table' then
    local kind = rawget(v, OUTCOME)
    if kind then return true, nil, kind, v[1], v[2], v[3], v[4] end
  end
  return true, v
end
-- The runner ---------------------------------------------------------------
-- Each request runs in a coroutine of its own (reused once it has ended),
-- so that a request waiting in `alaska.call` can be parked: its coroutine
-- yields PARK to the worker, which runs other requests on this VM and
-- resumes it when the reply (or its timeout) comes. Only the request's own
-- coroutine parks, and only where Lua can yield (not inside a C function's
-- callback, a script's own coroutine, ...): there the call waits in place.
local PARK, DONE, BREACH = {}, {}, {}
local co_create, co_yield, co_running, co_isyieldable =
  coroutine.create, coroutine.yield, coroutine.running, coroutine.isyieldable
local cur_co
local parked = {}
local idle = {}
-- A request coroutine: runs requests one after the other, each in a fresh
-- global environment over the shared globals, handed to the chunk as its
-- _ENV (scripts are compiled with `local _ENV = ...` in front).
local function new_env(ctx)
  package.path, package.cpath = base_path, base_cpath
  local env = setmetatable({
    alaskaContext = ctx,
    alaska = setmetatable({}, api_meta),
    _G = false,
  }, env_meta)
  env._G = env
  cur_env = env
  return env
end
local function loop(f, ctx)
  while true do
    f, ctx = co_yield(DONE, finish(raw_xpcall(f, handler, new_env(ctx))))
  end
end
-- What a request coroutine did when it stopped: finished (the runner's
-- `ok, value, kind, a, b, c`), parked (`true, nil, 'park', token`), or
-- yielded something else: a script's own `coroutine.yield` outside any
-- coroutine of its own, which fails the request as it always did.
local function settle(co, ok, tag, ...)
  cur_co = nil
  if not ok then return false, tag end
  if tag == DONE then
    idle[#idle + 1] = co
    return ...
  end
  if tag == PARK then
    local token = ...
    parked[token] = { co = co, ctx = cur_ctx, env = cur_env }
    return true, nil, 'park', token
  end
  return false, 'attempt to yield from outside a coroutine'
end
-- A request in place (no coroutine): for VMs that do not park, and for
-- scripts not known to call (a coroutine costs about half a microsecond).
local function direct(f, ctx)
  arm_memory()
  cur_ctx = ctx
  return finish(raw_xpcall(f, handler, new_env(ctx)))
end
local function start(f, ctx, parkable)
  if not parkable then return direct(f, ctx) end
  arm_memory()
  cur_ctx = ctx
  local co = idle[#idle]
  if co then idle[#idle] = nil else co = co_create(loop); worker_cos[co] = true end
  cur_co = co
  return settle(co, co_resume(co, f, ctx))
end
local function resume(token, ...)
  local p = parked[token]
  if not p then return false, 'no parked request ' .. tostring(token) end
  parked[token] = nil
  arm_memory()
  cur_ctx, cur_env, cur_co = p.ctx, p.env, p.co
  return settle(p.co, co_resume(p.co, ...))
end
api.call = function(address, subject, content, options)
  local r1, r2, token = reach.call(raw_running() == cur_co and co_isyieldable(),
    address, subject, content, options)
  if token == nil then return r1, r2 end
  r1, r2 = co_yield(PARK, token)
  if r1 == BREACH then error(r2, 0) end
  return r1, r2
end
api.http = function(request)
  local r1, r2, token = reach.http(raw_running() == cur_co and co_isyieldable(), request)
  if token == nil then return r1, r2 end
  r1, r2 = co_yield(PARK, token)
  if r1 == BREACH then error(r2, 0) end
  return r1, r2
end
return {
  start = start,
  resume = resume,
  breach = function(token, msg) return resume(token, BREACH, msg) end,
}
