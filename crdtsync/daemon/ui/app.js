// crdtsync dashboard: polls this node's /v1/status and /v1/placement and redraws every panel.
// No build step, no library, nothing fetched from another origin. To add a panel, write a function
// render(state) -> Node and add an entry to PANELS.
"use strict";

const POLL_MS = 1000;
const FETCH_TIMEOUT_MS = 3000;
const HISTORY = 60; // samples kept for the charts (about a minute)
const CHART_SLOTS_MIN = 20;
const SAMPLE_S_MIN = 0.5; // a rate over less daemon time than this would be noise
const TOKEN_KEY = "crdtsync.token";
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  status: null, // the last /v1/status answer
  placement: null, // the last /v1/placement answer (or null)
  placementError: null,
  conn: "connecting", // connecting | live | unreachable | unauthorized
  error: null,
  history: [], // {t, published, applied, aeRounds, writeRate, applyRate, aeRate}
};

// ------------------------------------------------------------------ panels

const PANELS = [
  { id: "cluster", title: "Datacenters and nodes", wide: true, render: renderCluster },
  { id: "rates", title: "Write and apply rates", render: renderRates },
  { id: "anti-entropy", title: "Anti-entropy", render: renderAntiEntropy },
  { id: "warnings", title: "Warnings", render: renderWarnings },
  { id: "peers", title: "Peers: lag and last heard", wide: true, render: renderPeers },
  { id: "partitions", title: "Partitions per node", render: renderPartitions },
];

// ------------------------------------------------------------------ DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") el.textContent = String(value);
    else el.setAttribute(key, String(value));
  }
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// ------------------------------------------------------------------ formatting

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "never";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3600000) return `${Math.round(ms / 60000)} min`;
  return `${(ms / 3600000).toFixed(1)} h`;
}

function fmtNum(n) {
  if (n === null || n === undefined) return "–";
  if (Math.abs(n) >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (Math.abs(n) >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

function dot(nodeState) {
  return h("span", { class: `dot state-${nodeState}` });
}

// ------------------------------------------------------------------ the cluster picture

// Every node this node knows of, with the state to draw: this node, every member (its link's state
// when the link has not said hello yet), and links to peers not identified yet.
function clusterNodes(st) {
  const peersById = new Map();
  const nodes = [{ id: st.node_id, dc: st.dc, relay: st.relay, state: "self", self: true, peer: null }];
  const unknown = [];
  for (const peer of st.peers) {
    if (peer.node_id) peersById.set(peer.node_id, peer);
    else unknown.push(peer);
  }
  for (const m of st.members) {
    const peer = peersById.get(m.node_id) || null;
    const nodeState = peer && peer.state === "connecting" ? "connecting" : m.state;
    nodes.push({ id: m.node_id, dc: m.dc, relay: m.relay, state: nodeState, self: false, peer, downs: m.downs });
  }
  for (const peer of unknown) {
    nodes.push({ id: peer.address, dc: peer.dc || "?", relay: false, state: peer.state, self: false, peer });
  }
  return nodes;
}

function renderCluster(st) {
  const nodes = clusterNodes(st);
  const dcs = [...new Set(nodes.map((n) => n.dc))].sort((a, b) => (a === st.dc ? -1 : b === st.dc ? 1 : a < b ? -1 : 1));
  const perRow = 3;
  const colW = 110;
  const rowH = 86;
  const dcW = Math.max(2, Math.min(perRow, Math.max(...dcs.map((dc) => nodes.filter((n) => n.dc === dc).length)))) * colW + 30;
  const gap = 40;
  const rows = Math.max(...dcs.map((dc) => Math.ceil(nodes.filter((n) => n.dc === dc).length / perRow)));
  const top = 86;
  const height = top + (rows - 1) * rowH + 58;
  const width = dcs.length * dcW + (dcs.length - 1) * gap + 20;
  const pos = new Map();
  const boxes = [];
  dcs.forEach((dc, i) => {
    const x0 = 10 + i * (dcW + gap);
    const members = nodes.filter((n) => n.dc === dc);
    const info = st.datacenters.find((d) => d.dc === dc);
    boxes.push(
      s("g", { class: "dc", "data-dc": dc },
        s("rect", { class: "dc-box", x: x0, y: 6, width: dcW, height: height - 12, rx: 10 }),
        s("text", { class: "dc-name", x: x0 + 12, y: 26, text: dc }),
        s("text", { class: "dc-count", x: x0 + dcW - 12, y: 26, "text-anchor": "end",
          text: info ? `${info.alive}/${info.members} alive · lag ${fmtMs(info.lag_ms)}` : "" })),
    );
    members.forEach((n, j) => {
      pos.set(n, { x: x0 + 15 + (j % perRow) * colW + colW / 2, y: top + Math.floor(j / perRow) * rowH });
    });
  });
  const self = nodes[0];
  const links = nodes.filter((n) => n.peer).map((n) => {
    const a = pos.get(self);
    const b = pos.get(n);
    const wan = n.peer.subscribed === "wan" ? " link-wan" : "";
    // A curve bowing up, so that a link never runs through a node between its ends.
    const cx = (a.x + b.x) / 2;
    const cy = Math.max(40, Math.min(a.y, b.y) - Math.abs(b.x - a.x) * 0.22);
    return s("path", { class: `link link-${n.peer.state}${wan}`, d: `M${a.x},${a.y} Q${cx},${cy} ${b.x},${b.y}`,
      "data-link": n.id });
  });
  const circles = nodes.map((n) => {
    const p = pos.get(n);
    const label = n.id.length > 16 ? `${n.id.slice(0, 15)}…` : n.id;
    const sub = n.self ? "this node" : n.downs ? `${n.state} · down ${n.downs}×` : n.state;
    return s("g", { class: `node${n.self ? " node-self" : ""}`, "data-node": n.id, "data-state": n.self ? "alive" : n.state,
      "data-dc": n.dc, "data-relay": n.relay ? "true" : "false" },
      s("title", { text: `${n.id} (${n.dc})${n.relay ? ", relay" : ""}: ${n.self ? "this node" : n.state}` }),
      n.self ? s("circle", { class: "node-ring", cx: p.x, cy: p.y, r: 24 }) : null,
      s("circle", { class: `node-circle fill-${n.self ? "self" : n.state}`, cx: p.x, cy: p.y, r: 18 }),
      n.relay ? s("g", {}, s("circle", { class: "relay-badge", cx: p.x + 15, cy: p.y - 14, r: 8 }),
        s("text", { class: "relay-text", x: p.x + 15, y: p.y - 10.5, text: "R" })) : null,
      s("text", { class: "node-label", x: p.x, y: p.y + 34, text: label }),
      s("text", { class: "node-sub", x: p.x, y: p.y + 46, text: sub }));
  });
  const svg = s("svg", { class: "cluster", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": "datacenters and nodes" }, boxes, links, circles);
  const legend = h("div", { class: "legend" },
    ["alive", "suspect", "down", "connecting", "left"].map((k) => h("span", { class: `state-${k}` }, dot(k), k)),
    h("span", {}, "R: relay of its datacenter"),
    h("span", {}, "lines: this node's links (thick: WAN, as a relay)"));
  return [svg, legend];
}

// ------------------------------------------------------------------ charts

function sparkline(values, seriesClass) {
  const w = 300;
  const hgt = 60;
  const max = Math.max(1, ...values.filter((v) => v !== null));
  // At least CHART_SLOTS_MIN samples wide, so that a page just opened draws more than a sliver.
  const slots = Math.min(HISTORY, Math.max(CHART_SLOTS_MIN, values.length));
  const step = w / (slots - 1);
  const offset = (slots - values.length) * step;
  const pts = values.map((v, i) => [offset + i * step, hgt - 2 - ((v || 0) / max) * (hgt - 6)]);
  const svg = s("svg", { viewBox: `0 0 ${w} ${hgt}`, preserveAspectRatio: "none", class: seriesClass });
  if (pts.length > 1) {
    const line = pts.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
    svg.append(s("polygon", { class: "area", points: `${pts[0][0].toFixed(1)},${hgt} ${line} ${pts[pts.length - 1][0].toFixed(1)},${hgt}` }));
    svg.append(s("polyline", { class: "line", points: line }));
  }
  return { svg, max };
}

function chart(title, key, seriesClass, unit) {
  const values = state.history.map((sample) => sample[key]);
  const known = values.filter((v) => v !== null);
  const now = known.length ? known[known.length - 1] : null;
  const { svg, max } = sparkline(values, seriesClass);
  return h("div", { class: "chart", "data-chart": key },
    h("div", { class: "chart-head" },
      h("span", {}, title),
      h("span", {}, h("b", { text: now === null ? "–" : `${fmtNum(now)} ${unit}` }), ` · max ${fmtNum(max)}`)),
    svg);
}

function renderRates(st) {
  return [
    chart("writes published (deltas_published)", "writeRate", "series-write", "/s"),
    chart("updates applied (deltas_applied + sync_updates_applied)", "applyRate", "series-apply", "/s"),
    h("div", { class: "muted" }, `published ${fmtNum(st.counters.deltas_published)}, applied ${fmtNum(st.counters.deltas_applied + st.counters.sync_updates_applied)}, pending ${st.pending_updates} since start`),
  ];
}

// ------------------------------------------------------------------ other panels

function renderAntiEntropy(st) {
  const c = st.counters;
  const running = st.peers.filter((p) => p.anti_entropy.in_progress).length;
  const divergent = st.peers.filter((p) => p.anti_entropy.divergence);
  return [
    h("dl", { class: "kv" },
      h("dt", {}, "rounds"), h("dd", {}, `${fmtNum(c.ae_rounds_completed)} completed, ${fmtNum(c.ae_rounds_in_sync)} in sync, ${fmtNum(c.ae_round_timeouts)} timed out`),
      h("dt", {}, "running now"), h("dd", {}, String(running)),
      h("dt", {}, "docs repaired"), h("dd", {}, fmtNum(c.ae_docs_repaired)),
      h("dt", {}, "divergence"), h("dd", { "data-divergence": divergent.length },
        divergent.length ? divergent.map((p) => `${p.node_id || p.address}: ${p.anti_entropy.divergence} segments`).join(", ")
          : h("span", { class: "ok" }, "none: the last round with every peer found no difference"))),
    chart("rounds per second", "aeRate", "series-ae", "/s"),
  ];
}

function renderWarnings(st) {
  const warnings = st.warnings || [];
  if (!warnings.length) return h("div", { class: "ok", "data-warnings": 0 }, "No warnings: links encrypted, tokens set, durable store.");
  return h("div", { "data-warnings": warnings.length },
    warnings.map((w) => h("div", { class: "warning", "data-warning": w.code }, h("code", { text: w.code }), " ", w.message)));
}

function renderPeers(st) {
  if (!st.peers.length) return h("div", { class: "muted" }, "No peers.");
  const head = ["peer", "dc", "link", "subscribed", "last heard", "behind", "lag", "AE rounds", "last AE", "divergence", "repaired"];
  const numeric = new Set(["behind", "lag", "AE rounds", "last AE", "divergence", "repaired"]);
  return h("table", {},
    h("thead", {}, h("tr", {}, head.map((t) => h("th", { class: numeric.has(t) ? "num" : null, text: t })))),
    h("tbody", {}, st.peers.map((p) => {
      const ae = p.anti_entropy;
      return h("tr", { "data-peer": p.node_id || p.address, "data-state": p.state },
        h("td", { title: p.address }, p.node_id || p.address),
        h("td", {}, p.dc || "–"),
        h("td", { class: `state-${p.state}` }, dot(p.state), p.state),
        h("td", {}, p.subscribed || "–"),
        h("td", {}, p.last_heard_ago_ms === null ? "never" : `${fmtMs(p.last_heard_ago_ms)} ago`),
        h("td", { class: "num" }, fmtNum(p.behind_updates)),
        h("td", { class: "num" }, fmtMs(p.lag_ms)),
        h("td", { class: "num" }, fmtNum(ae.rounds)),
        h("td", { class: "num" }, ae.last_round_ago_ms === null ? "never" : `${fmtMs(ae.last_round_ago_ms)} ago`),
        h("td", { class: "num" }, ae.in_progress ? "running" : ae.divergence === null ? "–" : String(ae.divergence)),
        h("td", { class: "num" }, `${fmtNum(ae.docs_repaired)} docs, ${fmtBytes(ae.bytes_repaired)}`));
    })));
}

function renderPartitions() {
  const pl = state.placement;
  if (!pl) return h("div", { class: "muted" }, state.placementError || "No placement yet.");
  const entries = Object.entries(pl.partitions_per_node).sort();
  const max = Math.max(1, ...entries.map(([, n]) => n));
  return [
    h("div", { class: "muted" }, `${pl.partitions} partitions, rf ${JSON.stringify(pl.rf)}, version ${pl.version}${pl.enforced ? "" : " (not enforced)"}`),
    entries.map(([node, n]) => h("div", { class: "bar-row", "data-partitions-node": node },
      h("span", { text: node }),
      h("div", { class: "bar" }, s("svg", { viewBox: "0 0 100 10", preserveAspectRatio: "none" },
        s("rect", { x: 0, y: 0, height: 10, width: ((100 * n) / max).toFixed(2) }))),
      h("span", { class: "num", text: fmtNum(n) }))),
    h("div", { class: "muted" }, "imbalance (most / mean per dc): " +
      Object.entries(pl.imbalance).map(([dc, v]) => `${dc} ${Number(v).toFixed(2)}`).join(", ")),
  ];
}

// ------------------------------------------------------------------ header and drawing

function renderSummary(st) {
  const alive = st.members.filter((m) => m.state === "alive").length;
  const stat = (value, label) => h("div", { class: "stat" }, h("b", { text: value }), h("span", { text: label }));
  return [
    stat(fmtNum(st.docs), "docs"),
    stat(`${alive + 1}/${st.members.length + 1}`, "nodes alive"),
    stat(`${st.peers.filter((p) => p.state === "alive").length}/${st.peers.length}`, "links alive"),
    stat(st.durability, st.store === "memory" ? "memory store" : "durability"),
    stat(fmtMs(st.uptime_s * 1000), "uptime"),
    stat(st.merkle_root.slice(0, 8), "merkle root"),
  ];
}

function draw() {
  const conn = document.getElementById("conn");
  conn.dataset.conn = state.conn;
  conn.textContent = state.conn === "live" ? "live" : state.error || state.conn;
  const st = state.status;
  const main = document.getElementById("panels");
  if (!st) return;
  document.body.dataset.node = st.node_id;
  document.getElementById("node-title").textContent = `${st.node_id} · ${st.dc}${st.relay ? " · relay" : ""}`;
  document.title = `crdtsync ${st.node_id}`;
  document.getElementById("summary").replaceChildren(...renderSummary(st));
  for (const panel of PANELS) {
    let el = document.getElementById(`panel-${panel.id}`);
    if (!el) {
      el = h("section", { id: `panel-${panel.id}`, class: `panel${panel.wide ? " wide" : ""}`, "data-panel": panel.id },
        h("h2", { text: panel.title }), h("div", { class: "body" }));
      main.append(el);
    }
    el.classList.toggle("stale", state.conn !== "live");
    let content;
    try {
      content = panel.render(st);
    } catch (err) {
      content = h("div", { class: "warning" }, `panel failed: ${err}`);
    }
    el.querySelector(".body").replaceChildren(...[content].flat(2).filter(Boolean));
  }
}

// ------------------------------------------------------------------ polling

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function getJson(path) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
  try {
    const response = await fetch(path, { headers, signal: controller.signal, cache: "no-store" });
    const body = await response.json().catch(() => null);
    return { status: response.status, body };
  } finally {
    clearTimeout(timer);
  }
}

function rate(prev, cur, key, dt) {
  if (!prev || dt <= 0 || cur[key] < prev[key]) return null;
  return (cur[key] - prev[key]) / dt;
}

function record(st) {
  const c = st.counters;
  const sample = {
    uptime: st.uptime_s,
    published: c.deltas_published,
    applied: c.deltas_applied + c.sync_updates_applied,
    aeRounds: c.ae_rounds_completed,
  };
  const prev = state.history[state.history.length - 1];
  if (prev && sample.uptime < prev.uptime) state.history = []; // the daemon restarted
  const last = state.history[state.history.length - 1];
  const dt = last ? sample.uptime - last.uptime : 0;
  if (last && dt < SAMPLE_S_MIN) return;
  sample.writeRate = rate(last, sample, "published", dt);
  sample.applyRate = rate(last, sample, "applied", dt);
  sample.aeRate = rate(last, sample, "aeRounds", dt);
  state.history.push(sample);
  if (state.history.length > HISTORY) state.history.shift();
}

function askToken(message) {
  state.conn = "unauthorized";
  state.error = "needs a token";
  const form = document.getElementById("token-form");
  form.hidden = false;
  if (message) document.getElementById("token-why").textContent = message;
}

async function poll() {
  try {
    const [status, placement] = await Promise.all([getJson("/v1/status"), getJson("/v1/placement").catch(() => null)]);
    if (status.status === 401) {
      const refused = token() !== null;
      sessionStorage.removeItem(TOKEN_KEY);
      askToken(refused ? "The node refused that token: enter a token of this node (scope read or write)." : null);
    } else if (status.status !== 200 || !status.body) {
      state.conn = "unreachable";
      state.error = `status answered ${status.status}`;
    } else {
      state.status = status.body;
      state.conn = "live";
      state.error = null;
      document.getElementById("token-form").hidden = true;
      document.getElementById("forget-token").hidden = token() === null;
      record(status.body);
      if (placement && placement.status === 200) {
        state.placement = placement.body;
        state.placementError = null;
      } else {
        state.placementError = placement ? `placement answered ${placement.status}` : "placement unreachable";
      }
    }
  } catch (err) {
    state.conn = "unreachable";
    state.error = "node unreachable";
  }
  draw();
  setTimeout(poll, POLL_MS);
}

function start() {
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token-input");
    if (input.value.trim()) sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    document.getElementById("token-form").hidden = true;
    state.conn = "connecting";
    state.error = null;
    draw();
  });
  document.getElementById("forget-token").addEventListener("click", (event) => {
    event.preventDefault();
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  poll();
}

start();
