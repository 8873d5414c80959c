// Helpers both pages share (the broker's console, a worker's status
// page): joined before each page's own script at build time.

// Each page refreshes itself this often, without reloading.
const POLL_MS = 2000;
// Points kept by a page that samples by itself (15 min at 2 s).
const KEEP = 450;
const local = {};
let token = sessionStorage.getItem("alaska-token") || "";

function esc(s) {
  return String(s == null ? "" : s).replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;","'":"&#39;"}[c]));
}
function num(n) { return n == null ? "" : String(n); }

// Every request carries the token if one was given; a 401 asks for it once
// and keeps it for the tab's life.
async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (token) opts.headers["Authorization"] = "Bearer " + token;
  if (method !== "GET") { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body || {}); }
  const r = await fetch(path, opts);
  if (r.status === 401) {
    const t = prompt("Admin token for " + location.host + " (its http/token):");
    if (t) { token = t; sessionStorage.setItem("alaska-token", t); return api(method, path, body); }
  }
  if (!r.ok) { const e = new Error(method + " " + path + ": " + r.status + " " + (await r.text())); e.status = r.status; throw e; }
  return r.json();
}

function table(rows, cols, empty) {
  if (!rows.length) return '<p class="empty">' + esc(empty) + '</p>';
  return "<table><thead><tr>" + cols.map(c => "<th>" + esc(c[0]) + "</th>").join("") + "</tr></thead><tbody>" +
    rows.map(r => "<tr>" + cols.map(c => c[2] ? '<td class="num">' + c[1](r) + "</td>" : "<td>" + c[1](r) + "</td>").join("") + "</tr>").join("") +
    "</tbody></table>";
}

// A hand-drawn SVG line over the samples, scaled to its own maximum.
function chart(title, values) {
  const max = Math.max(1, ...values);
  const n = Math.max(2, values.length);
  const pts = values.map((v, i) => (i * 100 / (n - 1)).toFixed(2) + "," + (58 - v * 56 / max).toFixed(2)).join(" ");
  const last = values.length ? values[values.length - 1] : 0;
  return '<div class="chart" data-title="' + esc(title) + '" data-points="' + values.length + '" data-last="' + last + '">' +
    '<div class="t"><span>' + esc(title) + "</span><span>" + esc(Math.round(last * 100) / 100) + " (max " + esc(Math.round(max * 100) / 100) + ")</span></div>" +
    '<svg viewBox="0 0 100 60" preserveAspectRatio="none"><polyline points="' + pts + '"/></svg></div>';
}

// Samples the page keeps itself, at most KEEP per key.
function remember(key, v) {
  (local[key] = local[key] || []).push(v);
  if (local[key].length > KEEP) local[key].shift();
  return local[key];
}

function fail(e) { document.getElementById("error").textContent = String(e.message || e); }
