// A worker's status page: talks only to the worker that served it.
let last = null;

function mib(b) { return (b / 1048576).toFixed(1) + " MiB"; }

document.getElementById("maint").addEventListener("click", async () => {
  if (!last) return;
  const on = !last.maintenance;
  if (!confirm((on ? "Put this worker in" : "Take this worker out of") + " maintenance?")) return;
  try { await api("POST", "/v1/maintenance", { on }); await refresh(); } catch (e) { fail(e); }
});

let prev = null;
async function refresh() {
  try {
    const s = await api("GET", "/v1/status");
    last = s;
    const q = s.requests;
    document.getElementById("what").textContent = "service " + s.service.address + " (" + s.service.filter + "), pid " + s.pid + ", v" + s.version;
    document.getElementById("maint").textContent = s.maintenance ? "end maintenance" : "maintenance";
    document.getElementById("summary").innerHTML = table([s], [
      ["state", r => '<span data-state>' + esc(r.state) + "</span>" + (r.maintenance ? ' <span class="tag">maintenance</span>' : "")],
      ["up", r => esc(Math.round(r.uptime_seconds)) + " s", true],
      ["received", r => esc(q.received), true], ["in flight", r => '<span data-inflight>' + esc(q.in_flight) + "</span>", true],
      ["waiting", r => esc(q.queued), true], ["retries waiting", r => esc(q.retry_waiting), true],
      ["dead letters", r => esc(q.dead_letters), true]], "");
    const rate = prev ? Math.max(0, (q.received - prev.received) / ((Date.now() - prev.at) / 1000)) : 0;
    prev = { received: q.received, at: Date.now() };
    document.getElementById("charts").innerHTML =
      chart("requests/s", remember("rate", rate)) + chart("in flight", remember("inflight", q.in_flight)) +
      chart("VM memory (MiB)", remember("mem", s.vms.memory_total_bytes / 1048576));
    document.getElementById("connections").innerHTML = table(s.connections, [
      ["broker", r => esc(r.endpoint)], ["state", r => esc(r.state)], ["acknowledged", r => r.acknowledged ? "yes" : "no"],
      ["maintenance", r => r.maintenance.applied ? "on" : "off"], ["reconnects", r => esc(r.reconnects), true]], "no connections");
    document.getElementById("vms").innerHTML = table(s.vms.memory_bytes.map((m, i) => ({ i, m })), [
      ["VM", r => esc(r.i)], ["memory", r => esc(mib(r.m)), true]], "no VMs");
    document.getElementById("runners").innerHTML = table(s.runners || [], [
      ["name", r => esc(r.name)], ["type", r => esc(r.type)], ["match", r => esc(r.match)],
      ["runs", r => esc(r.target)], ["slots", r => esc(r.slots), true]], "no runners");
    const subjects = Object.entries(q.by_subject || {}).map(([subject, o]) => ({ subject, o }));
    document.getElementById("subjects").innerHTML = table(subjects, [
      ["subject", r => '<span data-subject="' + esc(r.subject) + '">' + esc(r.subject) + "</span>"],
      ["done", r => esc(r.o.done || 0), true], ["retry", r => esc(r.o.retry || 0), true], ["fail", r => esc(r.o.fail || 0), true],
      ["drop", r => esc(r.o.drop || 0), true], ["forward", r => esc(r.o.forward || 0), true],
      ["errors", r => esc(Object.entries(r.o.errors || {}).map(([k, n]) => k + " " + n).join(", "))],
      ["mean time", r => r.o.duration_seconds && r.o.duration_seconds.count ? esc((1000 * r.o.duration_seconds.sum / r.o.duration_seconds.count).toFixed(2)) + " ms" : "", true]],
      "no requests yet");
    document.getElementById("scripts").innerHTML = table(s.scripts, [
      ["subject", r => esc(r.subject)], ["path", r => esc(r.path)], ["compiles", r => esc(r.compiles), true]], "no scripts compiled yet");
    document.getElementById("status").textContent = "updated " + new Date().toLocaleTimeString();
    document.getElementById("error").textContent = "";
  } catch (e) { fail(e); }
}
refresh();
setInterval(refresh, POLL_MS);
