// The broker's console: talks only to the broker that served it.


// The broker's own series: per service, and the whole broker's under "*"
// (with the error mailbox's size as its dead letters).
function drawCharts(series) {
  let html = "";
  for (const [name, ss] of Object.entries(series.services || {})) {
    const label = name === "*" ? "all services" : name;
    html += chart(label + " queue depth", ss.depth || []);
    html += chart(label + " requests/s", ss.requests_per_second || []);
    html += chart(label + " redeliveries", ss.redeliveries || []);
    html += chart(label + (name === "*" ? " dead letters kept" : " poison dead letters"), ss.dead_letters || []);
  }
  document.getElementById("charts").innerHTML = html || '<p class="empty">no services</p>';
}

async function maintenance(address, on) {
  if (!confirm((on ? "Put " : "Take ") + address + (on ? " in" : " out of") + " maintenance?")) return;
  await act(() => api("POST", "/v1/clients/" + encodeURIComponent(address) + "/maintenance", { on }));
}
async function replay(id) {
  if (!confirm("Replay dead letter " + id + "?")) return;
  await act(() => api("POST", "/v1/dead/" + encodeURIComponent(id) + "/replay", {}));
}
async function remove(id) {
  if (!confirm("Delete dead letter " + id + "?")) return;
  await act(() => api("DELETE", "/v1/dead/" + encodeURIComponent(id), {}));
}
async function show(id) {
  try {
    const d = await api("GET", "/v1/dead/" + encodeURIComponent(id));
    document.getElementById("letter").innerHTML = "<pre>" + esc(JSON.stringify(d, null, 2)) + "</pre>";
  } catch (e) { fail(e); }
}
async function purge() {
  if (!confirm("Delete ALL dead letters?")) return;
  await act(() => api("POST", "/v1/dead/purge", {}));
}
async function purgeQueue(name) {
  if (!confirm("Drop every request waiting in the queue of " + name + "?")) return;
  await act(() => api("POST", "/v1/services/" + encodeURIComponent(name) + "/purge", {}));
}
async function cancelDelayed(id) {
  if (!confirm("Cancel delayed request " + id + "? It will never be queued.")) return;
  await act(() => api("DELETE", "/v1/delayed/" + encodeURIComponent(id), {}));
}
async function act(f) {
  try { await f(); await refresh(); } catch (e) { fail(e); }
}

// Buttons carry their action in data attributes: no inline handlers.
document.addEventListener("click", ev => {
  const b = ev.target.closest("button");
  if (!b) return;
  const a = b.dataset;
  if (a.maint) maintenance(a.maint, a.on === "1");
  else if (a.replay) replay(a.replay);
  else if (a.del) remove(a.del);
  else if (a.show) show(a.show);
  else if (a.purgeq) purgeQueue(a.purgeq);
  else if (a.cancel) cancelDelayed(a.cancel);
  else if (b.id === "purge") purge();
});

async function refresh() {
  try {
    const [c, s, m, st, dead, series, delayed, sched] = await Promise.all([
      api("GET", "/v1/clients"), api("GET", "/v1/services"), api("GET", "/v1/mailboxes"),
      api("GET", "/v1/streams"), api("GET", "/v1/dead?limit=50"), api("GET", "/v1/series"),
      api("GET", "/v1/delayed?limit=50"), api("GET", "/v1/schedules")]);
    document.getElementById("clients").innerHTML = table(c.clients, [
      ["address", r => '<span data-client="' + esc(r.address) + '">' + esc(r.address) + "</span>" + (r.maintenance ? ' <span class="tag">maintenance</span>' : "")],
      ["offers", r => esc((r.offers || []).join(", "))],
      ["credit", r => esc(num(r.credit)), true],
      ["in flight", r => esc(num(r.unconfirmed)), true],
      ["last seen", r => esc(r.silent_seconds.toFixed(1)) + " s ago", true],
      ["", r => (r.offers && r.offers.length) ? '<button data-maint="' + esc(r.address) + '" data-on="' + (r.maintenance ? "0" : "1") + '">' + (r.maintenance ? "end maintenance" : "maintenance") + "</button>" : ""]],
      "no clients");
    document.getElementById("services").innerHTML = table(s.services, [
      ["name", r => esc(r.name)], ["queued", r => '<span data-queued="' + esc(r.name) + '">' + esc(r.queued) + "</span>", true], ["in flight", r => esc(r.unconfirmed), true],
      ["workers", r => esc(r.workers), true], ["in maintenance", r => esc(r.workers_in_maintenance), true],
      ["", r => r.queued ? '<button class="danger" data-purgeq="' + esc(r.name) + '">purge queue</button>' : ""]], "no services");
    document.getElementById("mailboxes").innerHTML = table(m.mailboxes, [
      ["address", r => esc(r.address)], ["messages", r => esc(r.messages), true], ["bytes", r => esc(r.bytes), true],
      ["connected", r => r.connected ? "yes" : "no"]], "no mailboxes");
    document.getElementById("streams").innerHTML = table(st.streams, [
      ["name", r => esc(r.name)], ["readers", r => esc(r.readers.length), true], ["writers", r => esc(r.writers), true]], "no streams");
    document.getElementById("dead").innerHTML = table(dead.letters, [
        ["when", r => esc(r.when)], ["service", r => esc(r.address)], ["subject", r => esc(r.subject)],
        ["outcome", r => esc(r.outcome)], ["reason", r => esc(r.reason)],
        ["", r => '<button data-show="' + esc(r.id) + '">show</button> <button data-replay="' + esc(r.id) + '">replay</button> <button class="danger" data-del="' + esc(r.id) + '">delete</button>']],
        "no dead letters") + (dead.total > dead.letters.length ? "<p>" + esc(dead.total) + " in all</p>" : "");
    document.getElementById("purge").disabled = !dead.total;
    document.getElementById("delayed").innerHTML = table(delayed.delayed, [
      ["due", r => esc(r.due)], ["service", r => esc(r.address)], ["subject", r => esc(r.subject)],
      ["sender", r => esc(r.sender)], ["bytes", r => esc(r.size), true],
      ["", r => '<button class="danger" data-cancel="' + esc(r.id) + '">cancel</button>']],
      "nothing delayed") + (delayed.total > delayed.delayed.length ? "<p>" + esc(delayed.total) + " in all</p>" : "");
    document.getElementById("schedules").innerHTML = table(sched.schedules, [
      ["name", r => esc(r.name)], ["when", r => esc(r.every ? "every " + r.every : r.cron + " (" + r.timezone + ")")],
      ["to", r => esc(r.address + " / " + r.subject)], ["next", r => esc(r.next_fire.time || "")],
      ["last", r => esc(r.last_fire.time || "never")], ["fires", r => esc(r.fires), true]], "no schedules");
    drawCharts(series);
    document.getElementById("status").textContent = "updated " + new Date().toLocaleTimeString();
    document.getElementById("error").textContent = "";
  } catch (e) { fail(e); }
}
refresh();
setInterval(refresh, POLL_MS);
