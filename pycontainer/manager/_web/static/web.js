// The web view's pages: the fleet (a live table) and one container (logs,
// charts, events, flame graph, buttons). Plain JS, no build step: the data
// comes as JSON and Server-Sent Events from /ui/api/ (pycontainer/manager/_web).
"use strict";

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const TERMINAL = ["STOPPED", "FAILED", "EVICTED", "LOST"];
let session = { token: false, operate: false };
let changed = () => {};  // what a page redraws once an action is done

function bytes(n) {
  if (n == null) return "";
  const units = ["B", "Ki", "Mi", "Gi", "Ti"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i ? `${n.toFixed(1)}${units[i]}` : `${n}B`;
}
const percent = (p) => (p == null ? "" : `${p.toFixed(1)}%`);
function age(t) {
  if (!t) return "-";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 120) return `${Math.floor(s)}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  return s < 172800 ? `${Math.floor(s / 3600)}h` : `${Math.floor(s / 86400)}d`;
}
const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });

function notice(text, error) {
  const el = $("#notice");
  el.hidden = !text;
  el.textContent = text || "";
  el.className = error ? "notice error" : "notice";
}

// An EventSource whose named events go to handlers; "end" closes it, an
// "error" event shows its message; the live marker says whether it is open.
const sources = new Set();
addEventListener("pagehide", () => { for (const s of sources) s.close(); });
addEventListener("pageshow", (e) => { if (e.persisted) location.reload(); });

function feed(url, handlers) {
  const source = new EventSource(url);
  sources.add(source);
  const live = $("#live");
  source.onopen = () => { live.textContent = "live"; live.classList.add("on"); };
  source.onerror = () => { live.textContent = "reconnecting…"; live.classList.remove("on"); };
  for (const [name, handle] of Object.entries(handlers)) {
    source.addEventListener(name, (e) => handle(JSON.parse(e.data)));
  }
  source.addEventListener("error", (e) => { if (e.data) notice(JSON.parse(e.data).message, true); });
  const close = source.close.bind(source);
  source.close = () => { sources.delete(source); close(); };
  source.addEventListener("end", () => source.close());
  return source;
}

async function act(id, action, body) {
  const response = await fetch(`/ui/api/containers/${encodeURIComponent(id)}/${action}`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Pycontainer-Web": "1" },
    body: JSON.stringify(body || {}),
  });
  const answer = await response.json().catch(() => ({ error: response.statusText }));
  if (response.ok) notice(`${answer.done} ${id}: done`);
  else notice(`${action} ${id}: ${answer.error}`, true);
  changed();
}

// The buttons a container's state allows (all disabled without the operate role).
function buttons(c, scale) {
  const can = session.token && session.operate;
  const live = !TERMINAL.includes(c.state);
  const allowed = {
    stop: live, pause: c.state === "RUNNING", resume: c.state === "PAUSED", restart: live,
  };
  let html = Object.entries(allowed).map(([a, ok]) =>
    `<button data-action="${a}" data-id="${esc(c.id)}" ${can && ok ? "" : "disabled"}>${a}</button>`
  ).join("");
  if (scale) {
    html += ` <input id="replicas" type="number" min="0" value="${c.replicas}">` +
      `<button data-action="scale" data-id="${esc(c.id)}" ${can ? "" : "disabled"}>scale</button>`;
  }
  return html;
}

document.addEventListener("click", (e) => {
  const button = e.target.closest("button[data-action]");
  if (!button) return;
  const action = button.dataset.action;
  const body = action === "scale" ? { replicas: Number($("#replicas").value) } : {};
  button.disabled = true;
  act(button.dataset.id, action, body);
});

// -- the fleet ------------------------------------------------------------------
function fleetRow(c) {
  const cpu = [percent(c.cpu_percent), c.cpu_request && `/ ${c.cpu_request}`].filter(Boolean);
  const mem = [bytes(c.rss_bytes), c.memory_request && `/ ${c.memory_request}`].filter(Boolean);
  return `<td><a href="/ui/containers/${encodeURIComponent(c.id)}">${esc(c.name)}</a></td>` +
    `<td class="muted">${esc(c.id)}</td>` +
    `<td class="state ${esc(c.state)}" title="${esc(c.reason)}">${esc(c.state)}</td>` +
    `<td>${esc(c.health)}</td><td class="num">${c.priority}</td>` +
    `<td class="num">${esc(cpu.join(" ") || "-")}</td><td class="num">${esc(mem.join(" ") || "-")}</td>` +
    `<td class="num">${c.restarts}</td><td class="num">${age(c.created)}</td>` +
    `<td class="actions">${buttons(c, false)}</td>`;
}

function showFleet(rows) {
  const body = $("#fleet tbody");
  $("#empty").hidden = rows.length > 0;
  const seen = new Set();
  rows.forEach((c, i) => {
    seen.add(c.id);
    let tr = body.querySelector(`tr[data-id="${CSS.escape(c.id)}"]`);
    if (!tr) { tr = document.createElement("tr"); tr.dataset.id = c.id; }
    const html = fleetRow(c);
    if (tr.dataset.html !== html) { tr.innerHTML = html; tr.dataset.html = html; }
    tr.dataset.state = c.state;
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
  });
  for (const tr of [...body.children]) if (!seen.has(tr.dataset.id)) tr.remove();
}

// The newest first, the last 50 kept.
function showEvent(e, fleet) {
  const body = $("#events tbody");
  const who = fleet ? `<td>${esc(e.container)}</td>` : "";
  body.insertAdjacentHTML("afterbegin", `<tr><td class="muted">${clock(e.time)}</td>${who}` +
    `<td>${esc(e.type)}</td><td>${esc(e.message)}</td></tr>`);
  while (body.children.length > 50) body.lastChild.remove();
}

// -- one container --------------------------------------------------------------
const FACTS = [["state", "state"], ["health", "health"], ["priority", "priority"],
  ["pid", "pid"], ["restarts", "restarts"], ["replicas", "replicas"],
  ["cpu request", "cpu_request"], ["memory request", "memory_request"], ["reason", "reason"]];

function showContainer(c) {
  $("#title").textContent = `${c.name} (${c.id})`;
  document.title = `pycontainer: ${c.name}`;
  $("#facts").innerHTML = FACTS.map(([label, key]) =>
    `<dt>${label}</dt><dd class="${key === "state" ? `state ${esc(c.state)}` : ""}" data-fact="${key}">${esc(c[key] ?? "-") || "-"}</dd>`
  ).join("");
  const html = buttons(c, true);
  const actions = $("#actions");
  if (actions.dataset.html !== html) { actions.innerHTML = html; actions.dataset.html = html; }
}

function chart(svg, points, key) {
  if (points.length < 2) return;
  const t0 = points[0].time, t1 = points[points.length - 1].time || t0 + 1;
  const max = Math.max(...points.map((p) => p[key]), key === "cpu" ? 1 : 1024);
  const xy = points.map((p) =>
    `${((p.time - t0) / (t1 - t0 || 1) * 300).toFixed(1)},${(78 - p[key] / max * 74).toFixed(1)}`);
  svg.innerHTML = `<polyline points="${xy.join(" ")}"/>`;
  const span = Math.round(t1 - t0);
  svg.parentNode.querySelector(".scale").textContent =
    `max ${key === "cpu" ? percent(max) : bytes(max)} over ${span}s`;
}

// One stream for the whole page (a browser opens six connections per host
// at most, for all its tabs): the logs as the filter says, the CPU and memory
// samples and the events, all sent again when the filter changes.
function containerPage(id) {
  const api = `/ui/api/containers/${encodeURIComponent(id)}`;
  const refresh = () => fetch(api).then((r) => r.json()).then((c) => {
    if (c.error) notice(c.error, true); else showContainer(c);
  });
  refresh();
  changed = refresh;
  setInterval(refresh, 5000);  // what its other replicas' events change (replicas)
  const form = $("#log-filter");
  const pre = $("#logs");
  let source = null, points = [];
  const open = () => {
    if (source) source.close();
    pre.textContent = "";
    $("#events tbody").textContent = "";
    points = [];
    const q = new URLSearchParams({ level: form.level.value, contains: form.contains.value });
    source = feed(`${api}/live?${q}`, {
      logs: (entries) => {
        const lines = entries.map((e) =>
          `<span class="${esc(e.level)}">${clock(e.time)} ${esc(e.level.padEnd(5))} ${esc(e.logger)} ${esc(e.message)}</span>`);
        pre.insertAdjacentHTML("beforeend", lines.join("\n") + "\n");
        if (form.follow.checked) pre.scrollTop = pre.scrollHeight;
      },
      ended: (end) => pre.insertAdjacentHTML("beforeend", `<span class="muted">— ${esc(end.message)}</span>\n`),
      samples: (samples) => {
        points.push(...samples);
        points.splice(0, points.length - 300);
        const last = points[points.length - 1];
        $("#cpu-now").textContent = percent(last.cpu);
        $("#rss-now").textContent = bytes(last.rss);
        chart($("#cpu-chart"), points, "cpu");
        chart($("#rss-chart"), points, "rss");
      },
      event: (e) => { showEvent(e, false); refresh(); },
    });
  };
  form.addEventListener("change", open);
  form.addEventListener("submit", (e) => { e.preventDefault(); open(); });
  open();
  $("#profile-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const seconds = e.target.seconds.value;
    $("#profile-status").textContent = `sampling for ${seconds}s…`;
    const answer = await fetch(`${api}/profile?seconds=${seconds}`).then((r) => r.json());
    if (answer.error) { $("#profile-status").textContent = answer.error; return; }
    $("#profile-status").textContent = `${answer.samples} samples over ${answer.duration}`;
    flameGraph($("#flame"), answer.collapsed);
  });
}

async function main() {
  session = await fetch("/ui/api/session").then((r) => r.json());
  if (!session.token) notice("Read-only: open the URL `pycontainer up` printed (with ?token=…) to use the buttons.");
  else if (!session.operate) notice(`Read-only: ${session.identity} lacks the operate role (start the manager with --role ${session.identity}=operate).`);
  if (document.body.dataset.page === "fleet") {
    feed("/ui/api/fleet", { fleet: showFleet, event: (e) => showEvent(e, true) });
  } else {
    containerPage(decodeURIComponent(location.pathname.split("/").pop()));
  }
}

main();
