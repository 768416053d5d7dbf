// dlapp dashboard: vanilla JS over the /api/v1 JSON API, with the token from sessionStorage.
// Every value from the server goes into the page as text (textContent), never as HTML.
"use strict";

const TOKEN_KEY = "dlapp.token";
const BASE = location.pathname.replace(/\/dashboard\/.*$/, "");
const main = document.getElementById("main");
const errorBox = document.getElementById("error");
let generation = 0; // bumped on every navigation: a stale page's timers stop
let me = null;

// -- API --------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, options = {}) {
  const resp = await fetch(BASE + "/api/v1" + path, {
    ...options,
    headers: { Authorization: "Bearer " + token(), ...(options.headers || {}) },
  });
  if (resp.status === 401) {
    signOut("The server refused the token: sign in again.");
    throw new ApiError(401, "unauthorized");
  }
  if (!resp.ok) {
    let message = resp.status + " " + resp.statusText;
    try {
      message = (await resp.json()).error.message;
    } catch (_) {
      /* not our error shape */
    }
    throw new ApiError(resp.status, message);
  }
  return resp;
}

async function getJson(path) {
  return (await api(path)).json();
}

// -- DOM helpers ------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") e.className = value;
    else if (key.startsWith("on")) e.addEventListener(key.slice(2), value);
    else if (key.startsWith("--")) e.style.setProperty(key, value);
    else e.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    e.append(child instanceof Node ? child : String(child));
  }
  return e;
}

function showError(message) {
  errorBox.textContent = message || "";
  errorBox.hidden = !message;
}

function time(iso) {
  return iso ? new Date(iso).toLocaleString() : "-";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.round(seconds);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}

function amount(resource, value) {
  if (resource === "memory_mb") return value >= 1024 ? (value / 1024).toFixed(1) + "G" : value + "M";
  return Number.isInteger(value) ? String(value) : value.toFixed(2);
}

function hue(name) {
  let h = 0;
  for (const ch of name || "") h = (h * 31 + ch.charCodeAt(0)) % 360;
  return String(h);
}

function stateBadge(app) {
  const word = app.state === "FINISHED" ? app.final_status : app.state;
  return el("span", { class: "badge state-" + word.toLowerCase(), "data-state": word }, word);
}

function idleBadge(app) {
  const u = app.gpu_usage;
  if (!u || !u.idle) return null;
  return el("span", { class: "badge gpu-idle", title: "its GPUs idle since " + time(u.idle_since) }, "GPUs idle");
}

function appLink(id) {
  return el("a", { href: "#/apps/" + encodeURIComponent(id), class: "app-link" }, id);
}

// Run fn now and every ms while this page is shown.
function live(gen, fn, ms) {
  const run = async () => {
    if (gen !== generation) return;
    try {
      await fn();
      if (gen === generation) showError("");
    } catch (e) {
      if (gen === generation && e.status !== 401) showError(e.message);
    }
    if (gen === generation) setTimeout(run, ms);
  };
  run();
}

// -- sign in ----------------------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  generation += 1;
  showSignIn(message);
}

function showSignIn(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
  showError("");
  const input = el("input", {
    id: "token",
    type: "password",
    autocomplete: "off",
    placeholder: "dlapp token",
    required: true,
  });
  const note = el("p", { id: "signin-message", class: "message" }, message || "");
  const form = el(
    "form",
    { id: "signin", onsubmit: (ev) => signIn(ev, input, note) },
    el("label", { for: "token" }, "Token"),
    input,
    el("button", { type: "submit" }, "Sign in"),
  );
  main.replaceChildren(
    el(
      "section",
      { class: "signin" },
      el("h1", {}, "Sign in to dlapp"),
      el(
        "p",
        { id: "signin-help" },
        "Paste your token: the one ",
        el("code", {}, "dlapp admin user add"),
        " printed for you (ask your admin). On the embedded cluster (",
        el("code", {}, "dlapp up"),
        ") you are its admin: your token is in ",
        el("code", {}, "admin.token"),
        " in its data directory (",
        el("code", {}, "cat ~/.local/share/dlapp/admin.token"),
        ", or under ",
        el("code", {}, "$DLAPP_HOME"),
        "). It is kept in this tab only.",
      ),
      form,
      note,
    ),
  );
  input.focus();
}

async function signIn(ev, input, note) {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  try {
    me = await getJson("/me");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    note.textContent = e.status === 401 ? "That token was refused." : e.message;
    return;
  }
  if (!location.hash || location.hash === "#/" || location.hash === "#") location.hash = "#/cluster";
  else route();
}

// -- routing ----------------------------------------------------------------------------------

async function route() {
  generation += 1;
  const gen = generation;
  showError("");
  if (!token()) return showSignIn();
  if (!me) {
    try {
      me = await getJson("/me");
    } catch (e) {
      return;
    }
  }
  if (gen !== generation) return;
  document.getElementById("nav").hidden = false;
  document.getElementById("signout").hidden = false;
  document.getElementById("who").textContent = me.name + (me.is_admin ? " (admin)" : "");
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const name = parts[0] || "cluster";
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === name);
  }
  // #/apps/ID, or #/apps/ID/logs/INDEX/STREAM: that app's page showing that log (the CLI prints these)
  if (name === "apps" && parts[1]) return appPage(gen, decodeURIComponent(parts[1]), logChoice(parts.slice(2)));
  const pages = { cluster: clusterPage, queues: queuesPage, apps: appsPage };
  (pages[name] || clusterPage)(gen);
}

// -- Cluster ----------------------------------------------------------------------------------

function clusterPage(gen) {
  const summary = el("p", { id: "cluster-summary", class: "summary" });
  const plot = el("div", { id: "gpu-plot", class: "plot" });
  const nodes = el("div", { id: "nodes", class: "nodes" });
  main.replaceChildren(el("h1", {}, "Cluster"), summary, nodes, plot);
  live(
    gen,
    async () => {
      const ts = await getJson("/timeseries"); // its last point is now: as the summary says
      if (gen !== generation) return;
      const root = ts.queues.root;
      plot.replaceChildren(
        el("h2", {}, "GPUs over time (the whole cluster)"),
        root
          ? linePlot("plot-cluster", [
              { name: "total", cls: "s-capacity", points: zip(root.time, root.gpus_capacity) },
              { name: "allocated", cls: "s-allocated", points: zip(root.time, root.gpus_allocated) },
              { name: "used (sampled)", cls: "s-used", points: zip(root.time, root.gpus_used) },
            ])
          : el("p", { class: "muted" }, "no samples yet"),
      );
    },
    3000,
  );
  live(
    gen,
    async () => {
      const c = await getJson("/cluster");
      if (gen !== generation) return;
      let total = 0;
      let used = 0;
      for (const n of c.nodes) {
        total += n.total.gpus;
        used += n.used.gpus;
      }
      summary.textContent =
        `${c.nodes.length} node(s) · GPUs ${used} of ${total} allocated · ` +
        `${c.apps.RUNNING || 0} running, ${c.apps.ACCEPTED || 0} waiting`;
      nodes.replaceChildren(...c.nodes.map(nodeCard));
    },
    3000,
  );
}

function nodeCard(n) {
  const res = ["cpus", "memory_mb", "gpus"]
    .map((r) => `${{ cpus: "CPUs", memory_mb: "memory", gpus: "GPUs" }[r]} ${amount(r, n.used[r])}/${amount(r, n.total[r])}`)
    .join(" · ");
  const state = n.state || (n.alive ? "ready" : "lost"); // ready, draining, drained, cordoned, lost
  return el(
    "section",
    { class: `node node-${state}`, "data-node": n.name, "data-node-state": state },
    el("h2", {}, n.name, state === "ready" ? null : el("span", { class: "badge node-state" }, state)),
    el("p", { class: "res" }, res),
    el("div", { class: "gpus" }, n.gpus.length ? n.gpus.map(gpuTile) : el("span", { class: "muted" }, "no GPUs")),
  );
}

function gpuName(g) {
  return g.mig ? "MIG " + g.mig : "GPU " + g.id;
}

function gpuTile(g) {
  if (!g.app_id) {
    return el(
      "div",
      { class: "gpu free", "data-gpu": g.id },
      el("span", { class: "gpu-id" }, gpuName(g)),
      el("span", { class: "gpu-app" }, "free"),
    );
  }
  const holders = g.holders || [];
  if (holders.length > 1 || (holders.length === 1 && holders[0].share < 1)) {
    // a GPU shared by fractional apps: one piece per holder, and what is left free
    const pieces = holders.map((h) =>
      el(
        "a",
        {
          class: "gpu-piece",
          href: "#/apps/" + encodeURIComponent(h.app_id),
          "data-app": h.app_id,
          title: `${h.app_id} (${h.user}), container ${h.container}: ${h.share} of the GPU`,
          "--share": h.share,
          "--hue": hue(h.user),
        },
        el("b", {}, String(h.share)),
        el("span", {}, h.app_id.replace(/^application_\d+_/, "app ")),
      ),
    );
    if (g.free > 0) pieces.push(el("span", { class: "gpu-piece free", "--share": g.free }, `free ${g.free}`));
    return el(
      "div",
      { class: "gpu shared", "data-gpu": g.id },
      el("span", { class: "gpu-id" }, gpuName(g)),
      el("div", { class: "gpu-pieces" }, ...pieces),
    );
  }
  return el(
    "a",
    {
      class: "gpu busy",
      href: "#/apps/" + encodeURIComponent(g.app_id),
      "data-gpu": g.id,
      "data-app": g.app_id,
      title: `${g.app_id} (${g.user}), container ${g.container}`,
      "--hue": hue(g.user),
    },
    el("span", { class: "gpu-id" }, gpuName(g)),
    el("span", { class: "gpu-app" }, g.app_id.replace(/^application_\d+_/, "app ")),
    el("span", { class: "gpu-user" }, g.user),
  );
}

// -- plots over time (SVG, drawn here: no library) ---------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function zip(times, values) {
  return times.map((t, i) => [t, values[i]]).filter((p) => p[1] !== null && p[1] !== undefined);
}

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// series: [{name, cls, points: [[unix seconds, value]]}]; one SVG with axes, lines and a legend.
function linePlot(id, series, format = (v) => amount("gpus", v)) {
  const W = 600, H = 160, L = 44, R = 8, T = 8, B = 22;
  const all = series.flatMap((s) => s.points);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, class: "lineplot", role: "img" });
  const wrap = el("figure", { id, class: "plot-figure", "data-points": String(all.length) }, svg);
  if (!all.length) {
    wrap.append(el("figcaption", { class: "muted" }, "no samples yet"));
    return wrap;
  }
  const t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(t0 + 1, ...all.map((p) => p[0]));
  const top = Math.max(1, ...all.map((p) => p[1]));
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  svg.append(
    svgEl("line", { x1: L, y1: y(0), x2: W - R, y2: y(0), class: "axis" }),
    svgEl("line", { x1: L, y1: T, x2: L, y2: y(0), class: "axis" }),
    svgEl("text", { x: L - 4, y: T + 8, class: "tick", "text-anchor": "end" }, format(top)),
    svgEl("text", { x: L - 4, y: y(0), class: "tick", "text-anchor": "end" }, format(0)),
    svgEl("text", { x: L, y: H - 6, class: "tick" }, clock(t0)),
    svgEl("text", { x: W - R, y: H - 6, class: "tick", "text-anchor": "end" }, clock(t1)),
  );
  const legend = el("figcaption", { class: "legend" });
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const line = svgEl("polyline", {
      points: s.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "),
      class: "series " + (s.cls || ""),
      "data-series": s.name,
    });
    if (!s.cls) line.style.stroke = `hsl(${(i * 67) % 360} 60% 45%)`; // CSSOM: allowed by the CSP
    svg.append(line);
    const last = s.points[s.points.length - 1][1];
    const swatch = el("span", { class: "swatch " + (s.cls || "") });
    if (!s.cls) swatch.style.background = `hsl(${(i * 67) % 360} 60% 45%)`;
    legend.append(el("span", { class: "legend-item", "data-series": s.name }, swatch, `${s.name}: ${format(last)}`));
  });
  wrap.append(legend);
  return wrap;
}

// -- Queues -----------------------------------------------------------------------------------

function queuesPage(gen) {
  const info = el("p", { class: "summary" });
  const tree = el("div", { id: "queues", class: "queues" });
  const plots = el("div", { id: "queue-plots", class: "plot" });
  main.replaceChildren(el("h1", {}, "Queues"), info, tree, plots);
  live(
    gen,
    async () => {
      const ts = await getJson("/timeseries");
      if (gen !== generation) return;
      const leaves = Object.keys(ts.queues).filter((q) => q !== "root");
      const per = (key) => leaves.map((q) => ({ name: q, points: zip(ts.queues[q].time, ts.queues[q][key]) }));
      plots.replaceChildren(
        el("h2", {}, "GPUs allocated per queue"),
        linePlot("plot-queues", per("gpus_allocated")),
        el("h2", {}, "GPUs used per queue (sampled utilisation)"),
        linePlot("plot-queues-used", per("gpus_used")),
        el("h2", {}, "Longest wait of a pending app"),
        linePlot("plot-waits", per("wait_s"), duration),
      );
    },
    15000,
  );
  live(
    gen,
    async () => {
      const q = await getJson("/queues");
      if (gen !== generation) return;
      info.textContent =
        `cluster: ${amount("gpus", q.cluster.gpus)} GPUs, ${amount("cpus", q.cluster.cpus)} CPUs, ` +
        `${amount("memory_mb", q.cluster.memory_mb)} memory · preemption ${q.preemption.enabled ? "on" : "off"}` +
        (q.error ? ` · queue file refused: ${q.error}` : "");
      tree.replaceChildren(...q.queues.map((row) => queueRow(row, q.cluster)));
    },
    5000,
  );
}

function queueRow(q, cluster) {
  const depth = q.path.split(".").length - 1;
  const bars = ["gpus", "cpus", "memory_mb"].map((r) => queueBar(q, r, cluster[r]));
  return el(
    "section",
    { class: "queue" + (q.leaf ? " leaf" : ""), "data-queue": q.path, "--depth": String(depth) },
    el(
      "h2",
      {},
      q.path.split(".").pop(),
      el("span", { class: "muted" }, ` ${q.path} · ${q.running_apps} running, ${q.pending_apps} waiting`),
      q.configured === false ? el("span", { class: "badge state-failed" }, "removed") : null,
    ),
    el("div", { class: "bars" }, bars),
  );
}

function pct(value, of) {
  return of > 0 ? Math.min(100, (100 * value) / of).toFixed(2) + "%" : "0%";
}

function queueBar(q, r, total) {
  const g = q.guaranteed ? q.guaranteed[r] : 0;
  const m = q.maximum ? q.maximum[r] : total;
  const used = q.used[r];
  const pending = q.pending[r];
  const label = r === "memory_mb" ? "memory" : r;
  return el(
    "div",
    { class: "bar-row", "data-resource": r },
    el("span", { class: "bar-label" }, label),
    el(
      "div",
      {
        class: "bar",
        "--max": pct(m, total),
        "--used": pct(used, total),
        "--pending": pct(Math.min(pending, Math.max(total - used, 0)), total),
        "--guaranteed": pct(g, total),
        title: `guaranteed ${amount(r, g)}, maximum ${amount(r, m)}, used ${amount(r, used)}, pending ${amount(r, pending)}`,
      },
      el("div", { class: "bar-max" }),
      el("div", { class: "bar-used" }),
      el("div", { class: "bar-pending" }),
      el("div", { class: "bar-guaranteed" }),
    ),
    el(
      "span",
      { class: "bar-text" },
      `used ${amount(r, used)} · guaranteed ${amount(r, g)} · max ${amount(r, m)} · pending ${amount(r, pending)}`,
    ),
  );
}

// -- Apps -------------------------------------------------------------------------------------

const appsView = { user: "", queue: "", state: "", sort: "submit_time", desc: true, open: new Set() };
const COLUMNS = [
  ["id", "ID"],
  ["name", "Name"],
  ["user", "User"],
  ["queue", "Queue"],
  ["state", "State"],
  ["gpus", "GPUs"],
  ["submit_time", "Submitted"],
  ["elapsed_s", "Elapsed"],
];

function sortValue(app, key) {
  if (key === "gpus") return app.resources.gpus * app.num_containers;
  if (key === "state") return app.state === "FINISHED" ? app.final_status : app.state;
  return app[key] ?? "";
}

function appsPage(gen) {
  const input = (key, placeholder) =>
    el("input", {
      id: "filter-" + key,
      placeholder,
      value: appsView[key],
      oninput: (ev) => {
        appsView[key] = ev.target.value.trim();
        refresh();
      },
    });
  const states = el(
    "select",
    {
      id: "filter-state",
      onchange: (ev) => {
        appsView.state = ev.target.value;
        refresh();
      },
    },
    ["", "ACCEPTED", "RUNNING", "FINISHED"].map((s) =>
      el("option", { value: s, selected: s === appsView.state }, s || "any state"),
    ),
  );
  const body = el("tbody");
  const head = el("tr");
  const count = el("p", { class: "summary", id: "apps-count" });
  main.replaceChildren(
    el("h1", {}, "Apps"),
    el("div", { class: "filters" }, input("user", "user"), input("queue", "queue (full path)"), states),
    count,
    el("table", { id: "apps", class: "table" }, el("thead", {}, head), body),
  );
  let apps = [];
  const render = () => {
    head.replaceChildren(
      ...COLUMNS.map(([key, title]) =>
        el(
          "th",
          {
            "data-sort": key,
            class: appsView.sort === key ? (appsView.desc ? "sorted desc" : "sorted asc") : "",
            onclick: () => {
              appsView.desc = appsView.sort === key ? !appsView.desc : false;
              appsView.sort = key;
              render();
            },
          },
          title,
        ),
      ),
    );
    const sorted = [...apps].sort((a, b) => {
      const x = sortValue(a, appsView.sort);
      const y = sortValue(b, appsView.sort);
      return (x < y ? -1 : x > y ? 1 : 0) * (appsView.desc ? -1 : 1);
    });
    count.textContent = `${apps.length} app(s)`;
    const appRow = (a) =>
      el(
        "tr",
        { "data-app": a.id, class: a.array ? "array-member" : "" },
        el("td", {}, appLink(a.id), a.array ? el("span", { class: "muted" }, ` ${a.array.member}`) : ""),
        el("td", {}, a.name),
        el("td", {}, a.user),
        el("td", {}, a.queue),
        el("td", {}, stateBadge(a)),
        el("td", {}, String(a.resources.gpus * a.num_containers), idleBadge(a)),
        el("td", {}, time(a.submit_time)),
        el("td", {}, duration(a.elapsed_s)),
      );
    // an array's members: one row for the array (its counts by state) where its first member
    // sorts, and its members under it once opened
    const members = new Map();
    for (const a of sorted) if (a.array) members.set(a.array.id, [...(members.get(a.array.id) || []), a]);
    const rows = [];
    for (const a of sorted) {
      if (!a.array) {
        rows.push(appRow(a));
        continue;
      }
      const id = a.array.id;
      if (members.get(id)[0] !== a) continue;
      rows.push(arrayRow(id, arrays.get(id), a, members.get(id).length));
      if (appsView.open.has(id)) rows.push(...members.get(id).map(appRow));
    }
    body.replaceChildren(...rows);
  };
  const arrayRow = (id, array, first, shown) => {
    const open = appsView.open.has(id);
    const counts = array ? Object.entries(array.counts).filter(([, n]) => n) : [];
    return el(
      "tr",
      { "data-array": id, class: "array-row" },
      el(
        "td",
        {},
        el(
          "button",
          {
            type: "button",
            class: "array-toggle",
            title: open ? "hide its members" : "show its members",
            onclick: () => {
              if (open) appsView.open.delete(id);
              else appsView.open.add(id);
              render();
            },
          },
          open ? "▾" : "▸",
        ),
        ` ${id} `,
        el("span", { class: "muted" }, `[${array ? array.size : shown} apps${array && array.max_running ? `, at most ${array.max_running} running` : ""}]`),
      ),
      el("td", {}, first.name),
      el("td", {}, first.user),
      el("td", {}, first.queue),
      el("td", { class: "array-counts" }, counts.map(([k, n]) => `${n} ${k}`).join(", ") || "-"),
      el("td", {}, `${first.resources.gpus * first.num_containers} each`),
      el("td", {}, time(first.submit_time)),
      el("td", {}, ""),
    );
  };
  let arrays = new Map();
  const load = async () => {
    const params = new URLSearchParams({ limit: "500" });
    for (const key of ["user", "queue", "state"]) if (appsView[key]) params.set(key, appsView[key]);
    const [data, found] = await Promise.all([getJson("/apps?" + params), getJson("/arrays?limit=100")]);
    if (gen !== generation) return;
    apps = data.apps;
    arrays = new Map(found.arrays.map((a) => [a.id, a]));
    render();
  };
  const refresh = () => load().catch((e) => showError(e.message));
  live(gen, load, 5000);
}

// -- one App ----------------------------------------------------------------------------------

function logChoice(parts) {
  if (parts[0] !== "logs") return null;
  const container = Number(parts[1] || 0);
  return { container: Number.isInteger(container) && container >= 0 ? container : 0, stream: parts[2] === "stderr" ? "stderr" : "stdout" };
}

function appPage(gen, id, shownLog = null) {
  const title = el("h1", {}, id);
  const actions = el("div", { class: "actions" });
  const facts = el("dl", { id: "facts", class: "facts" });
  const pending = el("p", { id: "pending", class: "pending", hidden: true });
  const containers = el("tbody");
  const gpuUse = el("div", { id: "gpu-use", class: "gpu-use" });
  const timeline = el("ol", { id: "timeline", class: "timeline" });
  const spec = el("pre", { id: "spec", class: "spec" });
  const log = el("pre", { id: "log", class: "log" });
  const logNotice = el("p", { id: "log-notice", class: "log-notice", hidden: true });
  // attempt: null for the current one (live while it runs), else an earlier attempt's kept log
  const logState = { container: 0, stream: "stdout", attempt: null, ...shownLog, offset: null, complete: false, hidden: 0, size: 0 };
  const restartLog = (change) => {
    Object.assign(logState, change, { offset: null, complete: false, hidden: 0, size: 0 });
    log.textContent = "";
    logNotice.hidden = true;
  };
  const pickAttempt = el("select", {
    id: "log-attempt",
    hidden: true,
    title: "which attempt's log",
    onchange: (ev) => {
      const n = Number(ev.target.value);
      restartLog({ attempt: n === Number(ev.target.dataset.current) ? null : n });
    },
  });
  const pick = el(
    "select",
    {
      id: "log-stream",
      onchange: (ev) => {
        const [c, s] = ev.target.value.split(":");
        restartLog({ container: Number(c), stream: s });
      },
    },
  );
  const download = el(
    "button",
    {
      id: "log-download",
      type: "button",
      title: "the whole log, as a file",
      onclick: () => downloadLog(id, logState).catch((e) => showError(e.message)),
    },
    "Download",
  );
  main.replaceChildren(
    el("p", {}, el("a", { href: "#/apps" }, "← Apps")),
    title,
    actions,
    pending,
    facts,
    el("h2", {}, "Containers"),
    el(
      "table",
      { id: "containers", class: "table" },
      el("thead", {}, el("tr", {}, ["#", "Node", "GPU ids", "State", "Exit code", "Started", "Finished", "Diagnostics"].map((h) => el("th", {}, h)))),
      containers,
    ),
    gpuUse,
    el("h2", {}, "Log ", pickAttempt, " ", pick, " ", download),
    logNotice,
    log,
    el("div", { class: "columns" }, el("div", {}, el("h2", {}, "Timeline"), timeline), el("div", {}, el("h2", {}, "Spec"), spec)),
  );
  let finished = false;
  getJson(`/apps/${encodeURIComponent(id)}/spec`)
    .then((s) => {
      spec.textContent = JSON.stringify(s.spec, null, 2);
    })
    .catch(() => {});
  const kill = (soft) => async () => {
    const word = soft ? "softkill" : "kill";
    if (!confirm(`${word} ${id}?`)) return;
    try {
      await api(`/apps/${encodeURIComponent(id)}/${word}`, { method: "POST" });
    } catch (e) {
      showError(e.message);
    }
  };
  live(
    gen,
    async () => {
      const app = await getJson(`/apps/${encodeURIComponent(id)}`);
      if (gen !== generation) return;
      finished = app.state === "FINISHED";
      title.replaceChildren(app.name + " ", stateBadge(app));
      const actionsKey = `${app.state}/${app.kill_requested}/${app.diagnostics}`;
      if (actions.dataset.key !== actionsKey) {
        actions.dataset.key = actionsKey; // redraw only on change: a click never hits a stale button
        const buttons = [
          el("button", { id: "softkill", type: "button", onclick: kill(true), disabled: !!app.kill_requested }, "Softkill"),
          el("button", { id: "kill", type: "button", class: "danger", onclick: kill(false), disabled: app.kill_requested === "kill" }, "Kill"),
        ];
        if (app.kill_requested) buttons.push(el("span", { class: "muted" }, `${app.kill_requested} requested`));
        actions.replaceChildren(...(finished ? [el("span", { class: "muted" }, app.diagnostics)] : buttons));
      }
      pending.hidden = !app.pending_reason;
      pending.textContent = app.pending_reason ? "Waiting: " + app.pending_reason : "";
      const fact = (k, v) => [el("dt", {}, k), el("dd", {}, v)];
      facts.replaceChildren(
        ...fact("ID", app.id),
        ...fact("User", app.user),
        ...fact("Queue", app.queue),
        ...(app.array
          ? fact(
              "Array member",
              `${app.array.member}` +
                Object.entries(app.array.values)
                  .map(([k, v]) => ` · ${k}=${v}`)
                  .join(""),
            )
          : []),
        ...fact("Resources", `${app.num_containers} × (${app.resources.cpus} CPUs, ${amount("memory_mb", app.resources.memory_mb)}, ${app.resources.gpus} GPUs)`),
        ...fact("Submitted", time(app.submit_time)),
        ...fact("Started", time(app.start_time)),
        ...fact("Finished", time(app.finish_time)),
        ...fact("Elapsed", duration(app.elapsed_s)),
        ...fact("Attempt", String(app.attempt)),
      );
      containers.replaceChildren(
        ...app.containers.map((c) =>
          el(
            "tr",
            { "data-container": String(c.index) },
            el("td", {}, String(c.index)),
            el("td", {}, c.node),
            el("td", { class: "gpu-ids" }, c.gpu_ids.join(",") || "-"),
            el("td", {}, c.state),
            el("td", {}, c.exit_code === null ? "-" : String(c.exit_code)),
            el("td", {}, time(c.start_time)),
            el("td", {}, time(c.finish_time)),
            el("td", {}, c.diagnostics),
          ),
        ),
      );
      gpuUse.replaceChildren(...gpuUseView(app));
      const want = [];
      for (let i = 0; i < app.num_containers; i++) for (const s of ["stdout", "stderr"]) want.push(`${i}:${s}`);
      if (pick.options.length !== want.length) {
        pick.replaceChildren(...want.map((v) => el("option", { value: v }, "container " + v.replace(":", " "))));
        pick.value = `${logState.container}:${logState.stream}`;
        if (shownLog) log.scrollIntoView();
      }
      if (pickAttempt.dataset.current !== String(app.attempt)) {
        // one option an attempt, the current one chosen (and followed) until another is
        pickAttempt.dataset.current = String(app.attempt);
        pickAttempt.replaceChildren(
          ...Array.from({ length: app.attempt }, (_, i) =>
            el("option", { value: String(i + 1) }, `attempt ${i + 1}` + (i + 1 === app.attempt ? " (current)" : "")),
          ),
        );
        pickAttempt.value = String(logState.attempt ?? app.attempt);
        pickAttempt.hidden = app.attempt < 2;
      }
      const events = await getJson(`/apps/${encodeURIComponent(id)}/events`);
      if (gen !== generation) return;
      timeline.replaceChildren(
        ...events.events.map((e) =>
          el("li", { class: "event kind-" + e.kind }, el("time", {}, time(e.time)), " ", el("span", { class: "badge" }, e.kind), " ", e.reason),
        ),
      );
      await tailLog(gen, id, logState, log, logNotice);
    },
    2000,
  );
}

function gpuUseView(app) {
  const u = app.gpu_usage;
  if (!app.resources.gpus) return [];
  if (!u) return [el("h2", {}, "GPU use"), el("p", { class: "muted" }, "no utilisation samples (yet)")];
  const mean = u.utilisation_mean === null ? "-" : u.utilisation_mean.toFixed(0) + "%";
  const rows = u.containers.flatMap((c) =>
    Object.entries(c.gpus).map(([gpu, g]) =>
      el(
        "tr",
        { "data-container": String(c.index), "data-gpu": gpu },
        el("td", {}, String(c.index)),
        el("td", {}, "GPU " + gpu),
        el("td", { class: "util" }, el("span", { class: "meter", "--pct": g.utilisation + "%" }), ` ${g.utilisation.toFixed(0)}%`),
        el("td", {}, amount("memory_mb", g.memory_used_mb)),
      ),
    ),
  );
  return [
    el("h2", {}, "GPU use ", u.idle ? idleBadge(app) : null),
    el(
      "p",
      { id: "gpu-summary", class: "summary" },
      `${mean} on average · ${u.gpu_hours_used.toFixed(3)} GPU-hours used · ${u.samples} samples` +
        (u.idle ? ` · idle since ${time(u.idle_since)}` : ""),
    ),
    el(
      "table",
      { id: "gpu-table", class: "table" },
      el("thead", {}, el("tr", {}, ["#", "GPU", "Utilisation (now)", "Memory"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows),
    ),
  ];
}

const LOG_VIEW_CHARS = 200000; // the view keeps this much of a log's end; the rest: Download
const LOG_TAIL_LINES = 2000; // a log is opened at its last lines

// The log's end, then what it writes next. The view never holds more than LOG_VIEW_CHARS: what
// it does not show is said above it (with the Download button for the whole log).
async function tailLog(gen, id, state, pre, notice) {
  if (state.complete) return;
  const first = state.offset === null;
  const params = logParams(state);
  if (first) {
    params.set("tail", String(LOG_TAIL_LINES));
    params.set("length", String(LOG_VIEW_CHARS));
  } else {
    params.set("offset", String(state.offset));
    params.set("length", String(256 * 1024));
  }
  let resp;
  try {
    resp = await api(`/apps/${encodeURIComponent(id)}/logs?${params}`);
  } catch (e) {
    if (e.status === 404) return; // the container has not started yet
    throw e;
  }
  const text = await resp.text();
  if (gen !== generation) return;
  const header = (name, fallback) => Number(resp.headers.get(name) ?? fallback);
  if (first) state.hidden = header("X-Dlapp-Offset", 0); // bytes before the tail: not shown
  state.offset = header("X-Dlapp-Next-Offset", state.offset);
  state.size = Math.max(header("X-Dlapp-Size", 0), state.offset);
  state.complete = resp.headers.get("X-Dlapp-Complete") === "true";
  if (text) {
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    let all = pre.textContent + text;
    if (all.length > LOG_VIEW_CHARS) {
      // drop whole lines from the top, never half of one
      const cut = all.indexOf("\n", all.length - LOG_VIEW_CHARS);
      const drop = cut < 0 ? all.length - LOG_VIEW_CHARS : cut + 1;
      state.hidden += new TextEncoder().encode(all.slice(0, drop)).length;
      all = all.slice(drop);
    }
    pre.textContent = all;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }
  notice.hidden = state.hidden <= 0;
  notice.textContent = state.hidden > 0
    ? `The first ${bytes(state.hidden)} of this log (${bytes(state.size)} so far) are not shown: ` +
      "this view keeps its end. Download has all of it."
    : "";
}

function logParams(state) {
  const params = new URLSearchParams({ container: String(state.container), stream: state.stream });
  if (state.attempt !== null) params.set("attempt", String(state.attempt));
  return params;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return i ? n.toFixed(1) + " " + units[i] : n + " B";
}

// The whole log as a file: fetched with the token (a plain link could not send it), then
// saved under the server's name for it.
async function downloadLog(id, state) {
  const params = logParams(state);
  const resp = await api(`/apps/${encodeURIComponent(id)}/logs/download?${params}`);
  const blob = await resp.blob();
  const named = /filename="([^"]+)"/.exec(resp.headers.get("Content-Disposition") || "");
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: named ? named[1] : `${id}.log`, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// -- start ------------------------------------------------------------------------------------

document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", route);
route();
